"""The webhook receiver: a FastAPI app the plugin mounts on every Airflow API server at ``/fal``.

Order of checks, cheapest and safest first: size (413) before reading more than the limit,
signature (401) before the body is parsed at all, then shape (400). Only a verified, well-formed
callback reaches the database. Plugin apps get no Airflow authentication, so fal's signature is
the only gate, and it is never skipped: an unreachable JWKS means 401, and fal retries later.

The record is committed before the task is woken, in its own transaction, so a failure to wake
(the task has not deferred yet, a database hiccup) still leaves the record for the trigger to find
when it starts, and the status-poll backstop covers the rest.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from fal_provider.webhooks.settings import ReceiverSettings
from fal_provider.webhooks.store import WebhookRecord, delete_expired, insert_record
from fal_provider.webhooks.urls import WEBHOOK_ROUTE, TaskIdentity, WebhookUrlError, validate_channel
from fal_provider.webhooks.verify import JWKSCache, WebhookVerificationError, WebhookVerifier
from fal_provider.webhooks.wake import WakeOutcome, fire_channel, wake_task

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")


class Rejected(Exception):
    """A call answered with an error code; ``reason`` is logged, never secrets."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """What happened to an accepted callback (for the log line and the tests)."""

    recorded: bool
    wake: WakeOutcome | None = None
    watchers_fired: int = 0


def _loggable(value: str | None) -> str:
    return _SAFE.sub("?", value or "-")[:64]


class WebhookReceiver:
    """Holds the lazily built settings and verifier; stateless apart from the JWKS cache."""

    def __init__(
        self, settings: ReceiverSettings | None = None, verifier: WebhookVerifier | None = None
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    @property
    def settings(self) -> ReceiverSettings:
        with self._lock:
            if self._settings is None:
                self._settings = ReceiverSettings.from_airflow()
            return self._settings

    @property
    def verifier(self) -> WebhookVerifier:
        settings = self.settings
        with self._lock:
            if self._verifier is None:
                cache = JWKSCache(
                    settings.jwks_url,
                    ttl=settings.jwks_cache_seconds,
                    min_refresh_interval=settings.jwks_min_refresh_seconds,
                )
                self._verifier = WebhookVerifier(cache, tolerance=settings.timestamp_tolerance_seconds)
            return self._verifier

    async def handle(self, request: Request) -> JSONResponse:
        header_id = _loggable(request.headers.get("x-fal-webhook-request-id"))
        try:
            body = await self._read_body(request)
            verified = await self.verifier.averify(request.headers, body)
            record, identity = self._parse(body, verified.request_id, verified.user_id, request.query_params)
        except WebhookVerificationError as err:
            log.warning("fal webhook rejected (401): %s [request_id=%s]", err.reason, header_id)
            return JSONResponse({"detail": "invalid webhook signature"}, status_code=401)
        except Rejected as err:
            log.warning(
                "fal webhook rejected (%d): %s [request_id=%s]", err.status_code, err.reason, header_id
            )
            return JSONResponse({"detail": err.reason}, status_code=err.status_code)
        try:
            outcome = await run_in_threadpool(self._record, record, identity)
        except Exception:
            log.exception("fal webhook for %s could not be recorded; fal will retry", header_id)
            return JSONResponse({"detail": "could not record the webhook"}, status_code=500)
        log.info(
            "fal webhook %s for request %s (status %s)%s%s",
            "recorded" if outcome.recorded else "duplicate",
            record.request_id,
            record.status,
            f"; task {outcome.wake.value}" if outcome.wake else "",
            f"; fired {outcome.watchers_fired} asset watcher(s)" if record.channel else "",
        )
        answer = {"status": "accepted" if outcome.recorded else "duplicate", "request_id": record.request_id}
        return JSONResponse(answer, status_code=200, background=self._maybe_sweep())

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise Rejected(400, "invalid Content-Length") from None
            if size > limit:
                raise Rejected(413, f"body of {size} bytes exceeds the {limit}-byte limit")
        chunks: list[bytes] = []
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise Rejected(413, f"body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(
        self, body: bytes, request_id: str, user_id: str, query: Mapping[str, str]
    ) -> tuple[WebhookRecord, TaskIdentity | None]:
        try:
            document: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise Rejected(400, "body is not JSON") from None
        if not isinstance(document, dict):
            raise Rejected(400, "body is not a JSON object")
        if document.get("request_id") != request_id or not _REQUEST_ID.match(request_id):
            raise Rejected(400, "body request_id is missing or differs from the signed one")
        if document.get("status") not in ("OK", "ERROR"):
            raise Rejected(400, "body status is not OK or ERROR")
        try:
            identity = TaskIdentity.from_query(query)
            channel = validate_channel(query["channel"]) if "channel" in query else None
        except WebhookUrlError as err:
            raise Rejected(400, f"bad callback URL: {err}") from None
        record = WebhookRecord.from_payload(
            document, user_id=user_id, channel=channel, payload_max_bytes=self.settings.payload_max_bytes
        )
        return record, identity

    def _record(self, record: WebhookRecord, identity: TaskIdentity | None) -> Outcome:
        """Runs in a worker thread: the ORM is synchronous."""
        from airflow.utils.session import create_session
        from sqlalchemy.exc import IntegrityError

        fired = 0
        try:
            with create_session(scoped=False) as session:
                recorded = insert_record(record, session=session)
                if recorded and record.channel:
                    fired = fire_channel(record, session=session)
        except IntegrityError:
            recorded, fired = False, 0
        wake = None
        if identity is not None:
            # Also on a duplicate: it recovers a wake that failed after the first record was
            # committed, and cannot wake twice (the task is no longer deferred on that trigger).
            try:
                with create_session(scoped=False) as session:
                    wake = wake_task(identity, record, session=session)
            except Exception:
                log.exception("fal webhook %s recorded but the task could not be woken", record.request_id)
        return Outcome(recorded=recorded, wake=wake, watchers_fired=fired)

    def _maybe_sweep(self) -> BackgroundTask | None:
        """At most one sweep per interval per process, after the answer is sent."""
        settings = self.settings
        with self._lock:
            if time.monotonic() - self._last_sweep < settings.cleanup_interval_seconds:
                return None
            self._last_sweep = time.monotonic()
        return BackgroundTask(run_in_threadpool, self.sweep)

    def sweep(self) -> int:
        from airflow.utils.session import create_session

        try:
            with create_session(scoped=False) as session:
                deleted = delete_expired(self.settings.record_retention_seconds, session=session)
        except Exception:
            log.exception("Sweeping old fal webhook records failed; will try again later")
            return 0
        if deleted:
            log.info("Deleted %d fal webhook record(s) older than the retention", deleted)
        return deleted


def create_app(
    settings: ReceiverSettings | None = None, *, verifier: WebhookVerifier | None = None
) -> FastAPI:
    """The receiver app; without arguments it reads its settings from Airflow on first use."""
    app = FastAPI(
        title="fal webhook receiver", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    receiver = WebhookReceiver(settings, verifier)
    app.state.receiver = receiver

    @app.post(WEBHOOK_ROUTE)
    async def receive_fal_webhook(request: Request) -> JSONResponse:
        return await receiver.handle(request)

    return app
