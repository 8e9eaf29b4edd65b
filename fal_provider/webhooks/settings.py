"""Receiver settings: Airflow config ``[fal]`` first, then the fal connection's extras, then defaults.

Everything is read when the receiver first handles a call, not when the plugin is imported, so a
plugin import never needs a database or a connection.

``[fal]`` options (env ``AIRFLOW__FAL__<OPTION>``):

- ``webhook_conn_id`` (``fal_default``): connection whose ``jwks_url`` extra is used.
- ``webhook_jwks_url``: overrides the connection's ``jwks_url``.
- ``webhook_jwks_cache_seconds`` (3600, at most 86400) and ``webhook_jwks_min_refresh_seconds`` (30).
- ``webhook_max_body_bytes`` (10 MiB): larger callbacks get 413.
- ``webhook_payload_max_bytes`` (8 KiB): larger model outputs are not copied into the record.
- ``webhook_record_retention_seconds`` (172800, two days) and ``webhook_cleanup_interval_seconds`` (3600).
- ``webhook_timestamp_tolerance_seconds`` (300).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fal_provider.webhooks.store import DEFAULT_PAYLOAD_MAX_BYTES
from fal_provider.webhooks.verify import (
    DEFAULT_JWKS_CACHE_SECONDS,
    DEFAULT_JWKS_MIN_REFRESH_SECONDS,
    DEFAULT_JWKS_URL,
    TIMESTAMP_TOLERANCE_SECONDS,
)

log = logging.getLogger(__name__)

SECTION = "fal"


@dataclass(frozen=True)
class ReceiverSettings:
    jwks_url: str = DEFAULT_JWKS_URL
    jwks_cache_seconds: float = DEFAULT_JWKS_CACHE_SECONDS
    jwks_min_refresh_seconds: float = DEFAULT_JWKS_MIN_REFRESH_SECONDS
    max_body_bytes: int = 10 * 1024 * 1024
    payload_max_bytes: int = DEFAULT_PAYLOAD_MAX_BYTES
    record_retention_seconds: float = 2 * 24 * 3600
    cleanup_interval_seconds: float = 3600
    timestamp_tolerance_seconds: float = TIMESTAMP_TOLERANCE_SECONDS

    @classmethod
    def from_airflow(cls) -> ReceiverSettings:
        from airflow.configuration import conf

        def number(option: str, default: float) -> float:
            return float(conf.get(SECTION, option, fallback=str(default)))

        defaults = cls()
        conn_id = conf.get(SECTION, "webhook_conn_id", fallback="fal_default")
        jwks_url = conf.get(SECTION, "webhook_jwks_url", fallback=None) or _connection_jwks_url(conn_id)
        return cls(
            jwks_url=jwks_url or DEFAULT_JWKS_URL,
            jwks_cache_seconds=number("webhook_jwks_cache_seconds", defaults.jwks_cache_seconds),
            jwks_min_refresh_seconds=number(
                "webhook_jwks_min_refresh_seconds", defaults.jwks_min_refresh_seconds
            ),
            max_body_bytes=int(number("webhook_max_body_bytes", defaults.max_body_bytes)),
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


def _connection_jwks_url(conn_id: str) -> str | None:
    """The ``jwks_url`` extra, read with the API server's own secrets chain (env, backends, DB)."""
    try:
        from airflow.models.connection import Connection

        connection = Connection.get_connection_from_secrets(conn_id)
    except Exception:
        log.info("fal webhook receiver: no connection %r; using the default JWKS URL", conn_id)
        return None
    extra: Any = connection.extra_dejson
    if isinstance(extra, str):
        extra = json.loads(extra)
    value = extra.get("jwks_url") if isinstance(extra, dict) else None
    return str(value) if value else None
