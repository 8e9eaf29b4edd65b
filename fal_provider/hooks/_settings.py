"""Resolve a fal connection (plus environment fallbacks) into plain, immutable settings.

The hook reads the connection once and keeps a :class:`FalSettings`; every URL, header and retry
limit comes from it. Resolution is a pure function of the connection fields and the environment,
so it is unit-testable without Airflow and is shared by the sync and the async (trigger) paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fal_provider.exceptions import FalMissingCredentialsError

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_RUN_URL = "https://fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_CDN_URL = "https://v3.fal.media"
DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
DEFAULT_RETRY_LIMIT = 5
DEFAULT_RETRY_MIN_WAIT = 0.5
DEFAULT_RETRY_MAX_WAIT = 30.0
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class FalSettings:
    """Everything the hook needs to call fal. The key is excluded from ``repr`` and equality output."""

    key: str = field(repr=False)
    queue_url: str = DEFAULT_QUEUE_URL
    run_url: str = DEFAULT_RUN_URL
    rest_url: str = DEFAULT_REST_URL
    cdn_url: str = DEFAULT_CDN_URL
    jwks_url: str = DEFAULT_JWKS_URL
    webhook_base_url: str | None = None
    #: May carry secrets of the user's own (e.g. a proxy token), so it stays out of ``repr`` too.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    retry_limit: int = DEFAULT_RETRY_LIMIT
    retry_min_wait: float = DEFAULT_RETRY_MIN_WAIT
    retry_max_wait: float = DEFAULT_RETRY_MAX_WAIT
    timeout: float = DEFAULT_TIMEOUT
    conn_id: str = "fal_default"

    def __str__(self) -> str:
        return repr(self)


def normalize_url(value: str | None, default: str) -> str:
    """A base URL without trailing slash; a bare host gets ``https://`` like fal's own hosts."""
    text = (value or "").strip()
    if not text:
        return default
    if "://" not in text:
        text = f"https://{text}"
    return text.rstrip("/")


def key_from_env(env: Mapping[str, str]) -> str | None:
    """fal_client's order: ``FAL_KEY``, else ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``."""
    if env.get("FAL_KEY"):
        return env["FAL_KEY"]
    if env.get("FAL_KEY_ID") and env.get("FAL_KEY_SECRET"):
        return f"{env['FAL_KEY_ID']}:{env['FAL_KEY_SECRET']}"
    return None


def parse_headers(raw: Any, conn_id: str) -> dict[str, str]:
    """Extras may hold headers as a JSON object or as a JSON string (the form's text box)."""
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError(
                f"Connection {conn_id!r}: extra 'headers' must be a JSON object, got unparsable text"
            ) from None
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"Connection {conn_id!r}: extra 'headers' must be a JSON object, got {type(raw).__name__}"
        )
    return {str(k): str(v) for k, v in raw.items()}


def _number(value: Any, name: str, conn_id: str, *, integer: bool = False, minimum: float = 0.0) -> Any:
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Connection {conn_id!r}: {name} must be a number, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"Connection {conn_id!r}: {name} must be >= {minimum}, got {value!r}")
    return number


def resolve_settings(
    *,
    conn_id: str,
    password: str | None,
    host: str | None,
    extras: Mapping[str, Any],
    overrides: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    conn_found: bool = True,
) -> FalSettings:
    """Combine connection fields, extras, hook arguments (``overrides``, non-``None`` win) and env.

    Raises :class:`FalMissingCredentialsError` naming the connection and the ``FAL_KEY`` fallback when
    no key is found anywhere.
    """
    environ = os.environ if env is None else env
    key = (password or "").strip() or key_from_env(environ)
    if not key:
        where = (
            f"connection {conn_id!r} has no password (API Key)"
            if conn_found
            # Outside a task (a script, a notebook), Airflow 3 hooks see only connections from
            # environment variables and secrets backends, not those stored in the metadata database.
            else f"connection {conn_id!r} is not defined here (outside a task Airflow 3 only reads "
            f"connections from AIRFLOW_CONN_{conn_id.upper()} and secrets backends)"
        )
        raise FalMissingCredentialsError(
            f"No fal API key: {where}, and neither FAL_KEY nor FAL_KEY_ID + FAL_KEY_SECRET is set in "
            "the environment."
        )
    merged: dict[str, Any] = {k: v for k, v in extras.items() if v not in (None, "")}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    headers = parse_headers(extras.get("headers"), conn_id)
    headers.update(parse_headers(overrides.get("headers"), conn_id))
    min_wait = _number(merged.get("retry_min_wait", DEFAULT_RETRY_MIN_WAIT), "retry_min_wait", conn_id)
    max_wait = _number(merged.get("retry_max_wait", DEFAULT_RETRY_MAX_WAIT), "retry_max_wait", conn_id)
    return FalSettings(
        key=key,
        queue_url=normalize_url(host, DEFAULT_QUEUE_URL),
        run_url=normalize_url(merged.get("run_url"), DEFAULT_RUN_URL),
        rest_url=normalize_url(merged.get("rest_url"), DEFAULT_REST_URL),
        cdn_url=normalize_url(merged.get("cdn_url"), DEFAULT_CDN_URL),
        jwks_url=normalize_url(merged.get("jwks_url"), DEFAULT_JWKS_URL),
        webhook_base_url=normalize_url(merged.get("webhook_base_url"), "") or None,
        headers=headers,
        retry_limit=_number(
            merged.get("retry_limit", DEFAULT_RETRY_LIMIT), "retry_limit", conn_id, integer=True, minimum=1
        ),
        retry_min_wait=min_wait,
        retry_max_wait=max(max_wait, min_wait),
        timeout=_number(merged.get("timeout", DEFAULT_TIMEOUT), "timeout", conn_id, minimum=0.001),
        conn_id=conn_id,
    )
