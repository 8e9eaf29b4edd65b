"""Receiver settings: Airflow config ``[fal]`` first, then the fal connection's extras, then defaults.

Everything is read when the receiver first handles a call, not when the plugin is imported, so a
plugin import never needs a database or a connection. A change takes effect when the API server
restarts.

``[fal]`` options (env ``AIRFLOW__FAL__<OPTION>``):

- ``webhook_conn_id`` (``fal_default``): connection whose extras are used below.
- ``webhook_allowed_user_ids`` (else the connection's ``webhook_allowed_user_ids`` extra): the fal
  user ids whose signed callbacks are accepted, comma-separated or a JSON list. fal signs every
  customer's callbacks with the same keys, so this is what makes a callback "for us".
- ``webhook_secret`` (else the connection's ``webhook_secret`` extra): the key of the channel
  tokens (at least 16 characters). Without it channel URLs cannot be built and channel callbacks
  are refused.
- ``webhook_jwks_url``: overrides the connection's ``jwks_url``.
- ``webhook_jwks_cache_seconds`` (3600, at most 86400) and ``webhook_jwks_min_refresh_seconds`` (30).
- ``webhook_max_body_bytes`` (10 MiB): larger callbacks get 413.
- ``webhook_max_concurrent_bodies`` (4), ``webhook_body_read_timeout_seconds`` (10) and
  ``webhook_body_slot_wait_seconds`` (2): bodies read at once, the time a sender gets to send one,
  and how long a call waits for a free slot before it is answered 503.
- ``webhook_payload_max_bytes`` (8 KiB): larger model outputs are not copied into the record.
- ``webhook_record_retention_seconds`` (172800, two days) and ``webhook_cleanup_interval_seconds`` (3600).
- ``webhook_timestamp_tolerance_seconds`` (300).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fal_provider.hooks.fal import DEFAULT_JWKS_URL
from fal_provider.webhooks.store import DEFAULT_PAYLOAD_MAX_BYTES
from fal_provider.webhooks.urls import WebhookSecret, WebhookUrlError, build_webhook_url
from fal_provider.webhooks.verify import (
    DEFAULT_JWKS_CACHE_SECONDS,
    DEFAULT_JWKS_MIN_REFRESH_SECONDS,
    TIMESTAMP_TOLERANCE_SECONDS,
)

log = logging.getLogger(__name__)

SECTION = "fal"
DEFAULT_CONN_ID = "fal_default"


@dataclass(frozen=True)
class ReceiverSettings:
    jwks_url: str = DEFAULT_JWKS_URL
    jwks_cache_seconds: float = DEFAULT_JWKS_CACHE_SECONDS
    jwks_min_refresh_seconds: float = DEFAULT_JWKS_MIN_REFRESH_SECONDS
    #: Empty: no allow-list configured (channel callbacks refused, task callbacks only when awaited).
    allowed_user_ids: frozenset[str] = frozenset()
    webhook_secret: WebhookSecret | None = field(default=None, repr=False)
    max_body_bytes: int = 10 * 1024 * 1024
    max_concurrent_bodies: int = 4
    body_read_timeout_seconds: float = 10.0
    body_slot_wait_seconds: float = 2.0
    payload_max_bytes: int = DEFAULT_PAYLOAD_MAX_BYTES
    record_retention_seconds: float = 2 * 24 * 3600
    cleanup_interval_seconds: float = 3600
    timestamp_tolerance_seconds: float = TIMESTAMP_TOLERANCE_SECONDS

    def __post_init__(self) -> None:
        if self.max_concurrent_bodies < 1:
            raise ValueError("webhook_max_concurrent_bodies must be at least 1")
        if self.body_read_timeout_seconds <= 0 or self.body_slot_wait_seconds < 0:
            raise ValueError("webhook body read timeout must be > 0 and slot wait >= 0 seconds")

    @classmethod
    def from_airflow(cls) -> ReceiverSettings:
        from airflow.configuration import conf

        def number(option: str, default: float) -> float:
            return float(conf.get(SECTION, option, fallback=str(default)))

        defaults = cls()
        conn_id = conf.get(SECTION, "webhook_conn_id", fallback=DEFAULT_CONN_ID)
        extra = _connection_extra(conn_id)
        jwks_url = conf.get(SECTION, "webhook_jwks_url", fallback=None) or extra.get("jwks_url")
        return cls(
            jwks_url=str(jwks_url or DEFAULT_JWKS_URL),
            jwks_cache_seconds=number("webhook_jwks_cache_seconds", defaults.jwks_cache_seconds),
            jwks_min_refresh_seconds=number(
                "webhook_jwks_min_refresh_seconds", defaults.jwks_min_refresh_seconds
            ),
            allowed_user_ids=_allowed_user_ids(conf, extra),
            webhook_secret=_secret(conf, extra),
            max_body_bytes=int(number("webhook_max_body_bytes", defaults.max_body_bytes)),
            max_concurrent_bodies=int(
                number("webhook_max_concurrent_bodies", defaults.max_concurrent_bodies)
            ),
            body_read_timeout_seconds=number(
                "webhook_body_read_timeout_seconds", defaults.body_read_timeout_seconds
            ),
            body_slot_wait_seconds=number("webhook_body_slot_wait_seconds", defaults.body_slot_wait_seconds),
            payload_max_bytes=int(number("webhook_payload_max_bytes", defaults.payload_max_bytes)),
            record_retention_seconds=number(
                "webhook_record_retention_seconds", defaults.record_retention_seconds
            ),
            cleanup_interval_seconds=number(
                "webhook_cleanup_interval_seconds", defaults.cleanup_interval_seconds
            ),
            timestamp_tolerance_seconds=number(
                "webhook_timestamp_tolerance_seconds", defaults.timestamp_tolerance_seconds
            ),
        )


def _allowed_user_ids(conf: Any, extra: Mapping[str, Any]) -> frozenset[str]:
    raw = conf.get(SECTION, "webhook_allowed_user_ids", fallback=None) or extra.get(
        "webhook_allowed_user_ids"
    )
    try:
        return parse_user_ids(raw)
    except ValueError as err:
        log.error("fal webhook receiver: %s; treating it as no allow-list", err)
        return frozenset()


def _secret(conf: Any, extra: Mapping[str, Any]) -> WebhookSecret | None:
    raw = conf.get(SECTION, "webhook_secret", fallback=None) or extra.get("webhook_secret")
    try:
        return WebhookSecret.from_config(raw)
    except WebhookUrlError as err:
        log.error("fal webhook receiver: %s; channel callbacks will be refused", err)
        return None


def parse_user_ids(raw: Any) -> frozenset[str]:
    """``"a, b"``, ``'["a","b"]'`` or a list; blanks dropped. Garbage is an error, not an empty list."""
    if raw is None or raw == "":
        return frozenset()
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except ValueError:
                raise ValueError("webhook_allowed_user_ids: not a valid JSON list") from None
        else:
            raw = text.split(",")
    if not isinstance(raw, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in raw):
        raise ValueError("webhook_allowed_user_ids must be a comma-separated string or a list of strings")
    return frozenset(value.strip() for value in raw if value.strip())


def _connection_extra(conn_id: str) -> dict[str, Any]:
    """The connection's extras, read with the API server's own secrets chain (env, backends, DB)."""
    try:
        from airflow.models.connection import Connection

        connection = Connection.get_connection_from_secrets(conn_id)
    except Exception:
        log.info("fal webhook receiver: no connection %r; using [fal] settings and defaults", conn_id)
        return {}
    return _as_dict(connection.extra_dejson)


def _as_dict(extra: Any) -> dict[str, Any]:
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            return {}
    return dict(extra) if isinstance(extra, Mapping) else {}


def channel_secret(conn_id: str = DEFAULT_CONN_ID) -> WebhookSecret:
    """The channel-token key as a task or script sees it: ``[fal] webhook_secret``, else the extra.

    Raises ``WebhookUrlError`` saying where to set it when neither is configured.
    """
    from airflow.configuration import conf
    from airflow.sdk import BaseHook

    raw = conf.get(SECTION, "webhook_secret", fallback=None)
    if not raw:
        raw = _as_dict(BaseHook.get_connection(conn_id).extra_dejson).get("webhook_secret")
    secret = WebhookSecret.from_config(raw)
    if secret is None:
        raise WebhookUrlError(
            f"No webhook secret: set the 'webhook_secret' extra of connection {conn_id!r} (or "
            "[fal] webhook_secret) to a random string of at least 16 characters, the same one the "
            "API servers use; channel URLs carry a token derived from it"
        )
    return secret


def channel_webhook_url(channel: str, *, conn_id: str = DEFAULT_CONN_ID) -> str:
    """The ``fal_webhook`` URL for an event channel, from the connection's base URL and secret."""
    from airflow.sdk import BaseHook

    base_url = _as_dict(BaseHook.get_connection(conn_id).extra_dejson).get("webhook_base_url")
    return build_webhook_url(str(base_url or ""), channel=channel, secret=channel_secret(conn_id))
