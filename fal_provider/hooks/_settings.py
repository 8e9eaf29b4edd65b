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
from functools import lru_cache
from typing import Any

import httpx

from fal_provider.exceptions import FalInputError, FalMissingCredentialsError
from fal_provider.headers import check_headers, check_key

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_RUN_URL = "https://fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_CDN_URL = "https://v3.fal.media"
DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
DEFAULT_RETRY_LIMIT = 5
DEFAULT_RETRY_MIN_WAIT = 0.5
DEFAULT_RETRY_MAX_WAIT = 30.0
DEFAULT_TIMEOUT = 120.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: A WebSocket goes to the same server as the HTTP URL it was derived from.
_HTTP_SCHEME_OF = {"ws": "http", "wss": "https"}

#: ``(scheme, host, port)``, normalised: lower case, default port filled in, ``ws``/``wss`` as
#: ``http``/``https``.
Origin = tuple[str, str, int]


@lru_cache(maxsize=16384)
def origin_of(url: str | httpx.URL) -> Origin | None:
    """The origin a request to ``url`` would connect to, parsed as httpx parses it; ``None`` when
    ``url`` is not an absolute http(s)/ws(s) URL (such a URL never gets the key).

    Cached: every poll of a waiting request checks the same status URL (parsing costs ~0.1 ms)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    scheme = _HTTP_SCHEME_OF.get(parsed.scheme.lower(), parsed.scheme.lower())
    host = parsed.raw_host.decode("ascii", "replace").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, parsed.port or _DEFAULT_PORTS[scheme]


def show_origin(origin: Origin | None) -> str:
    if origin is None:
        return "<not an http(s) URL>"
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")


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

    def __post_init__(self) -> None:
        """A key or header that cannot be sent as given fails here, before any call (see ``_headers``)."""
        check_key(self.key, self.conn_id)
        check_headers(self.headers, f"Connection {self.conn_id!r}, extra 'headers'")
        for name in ("queue_url", "run_url", "rest_url", "cdn_url"):
            if origin_of(getattr(self, name)) is None:
                raise FalInputError(
                    f"Connection {self.conn_id!r}: {name} must be an absolute http(s) URL, "
                    f"got {getattr(self, name)!r}"
                )

    @property
    def key_origins(self) -> frozenset[Origin]:
        """The only origins the key is sent to: the configured queue, run, REST and CDN hosts."""
        origins = (origin_of(url) for url in (self.queue_url, self.run_url, self.rest_url, self.cdn_url))
        return frozenset(origin for origin in origins if origin is not None)

    @property
    def queue_origin(self) -> Origin | None:
        return origin_of(self.queue_url)

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
    key = (env.get("FAL_KEY") or "").strip()
    if key:
        return key
    key_id, secret = (env.get("FAL_KEY_ID") or "").strip(), (env.get("FAL_KEY_SECRET") or "").strip()
    if key_id and secret:
        return f"{key_id}:{secret}"
    return None


def parse_headers(raw: Any, conn_id: str) -> dict[str, str]:
    """Extras may hold headers as a JSON object or as a JSON string (the form's text box)."""
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise FalInputError(
                f"Connection {conn_id!r}: extra 'headers' must be a JSON object, got unparsable text"
            ) from None
    if not isinstance(raw, Mapping):
        raise FalInputError(
            f"Connection {conn_id!r}: extra 'headers' must be a JSON object, got {type(raw).__name__}"
        )
    return {str(k): str(v) for k, v in raw.items()}


def _number(value: Any, name: str, conn_id: str, *, integer: bool = False, minimum: float = 0.0) -> Any:
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise FalInputError(f"Connection {conn_id!r}: {name} must be a number, got {value!r}") from None
    if number < minimum:
        raise FalInputError(f"Connection {conn_id!r}: {name} must be >= {minimum}, got {value!r}")
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
