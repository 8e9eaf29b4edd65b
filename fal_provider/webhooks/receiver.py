"""The webhook receiver: a FastAPI app the plugin mounts on every Airflow API server at ``/fal``.

Order of checks, cheapest and safest first, so an unauthenticated caller costs almost nothing:

1. before the body is read: the four signature headers and the timestamp window (401), the
   callback URL's query (400), the signed user id against the allow-list and a channel's token
   (403), ``Content-Length`` against the limit (413);
2. the body, read as a stream into one buffer, by at most ``max_concurrent_bodies`` calls at a
   time (others wait ``body_slot_wait_seconds``, then 503) and within ``body_read_timeout_seconds``
   (a slow sender gets 408 and is dropped), never past the size limit (413);
3. the signature over the body (401), then its shape (400: not JSON, nested too deep, fields);
4. without an allow-list, a task callback is accepted only if that task is deferred waiting for
   the signed request id (403 otherwise; fal retries, and the status poll covers the task).

Plugin apps get no Airflow authentication, so fal's signature is the only gate, and it is never
skipped: an unreachable JWKS means 401, and fal retries later. fal signs every customer's
callbacks with the same keys, so a valid signature says "from fal"; the allow-list and the
channel token say "for us".

The record is committed before the task is woken, in its own transaction, so a failure to wake
(the task has not deferred yet, a database hiccup) still leaves the record for the trigger to find
when it starts, and the status-poll backstop covers the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from fal_provider.webhooks.settings import ReceiverSettings
from fal_provider.webhooks.store import WebhookRecord, delete_expired, insert_record, record_exists
from fal_provider.webhooks.urls import (
    TOKEN_PARAM,
    WEBHOOK_ROUTE,
    TaskIdentity,
    WebhookUrlError,
    validate_channel,
)
from fal_provider.webhooks.verify import JWKSCache, WebhookVerificationError, WebhookVerifier
from fal_provider.webhooks.wake import WakeOutcome, fire_channel, is_awaited, wake_task

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")
#: Deeper than any model output; deeper bodies would only exercise recursion further down.
MAX_JSON_DEPTH = 64
HOW_TO_ALLOW = (
    "set the 'webhook_allowed_user_ids' extra of the fal connection (or [fal] "
    "webhook_allowed_user_ids) to your fal user id(s), comma-separated; the id is the "
    "X-Fal-Webhook-User-Id header of your callbacks, logged here when one is refused"
)


class Rejected(Exception):
    """A call answered with an error code; ``reason`` is logged, never secrets."""

    def __init__(self, status_code: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Outcome:
    """What happened to an accepted callback (for the log line and the tests)."""

    recorded: bool
    wake: WakeOutcome | None = None
    watchers_fired: int = 0


@dataclass(frozen=True)
class Target:
    """Who the callback URL names, read from the (unsigned) query before the body is read."""

    identity: TaskIdentity | None
    channel: str | None
    #: No allow-list: accept only if the named task is deferred waiting for the signed request.
    awaited_only: bool


def _loggable(value: str | None) -> str:
    return _SAFE.sub("?", value or "-")[:64]


def json_depth(document: Any) -> int:
    """Nesting depth of a parsed JSON value, iteratively (no recursion to exhaust)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


class WebhookReceiver:
    """Holds the lazily built settings, verifier and body-read slots; no other state."""

    def __init__(
        self, settings: ReceiverSettings | None = None, verifier: WebhookVerifier | None = None
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()
        self._slots: asyncio.Semaphore | None = None
        self._warned_no_allow_list = False

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

    @property
    def slots(self) -> asyncio.Semaphore:
        settings = self.settings
        with self._lock:
            if self._slots is None:
                self._slots = asyncio.Semaphore(settings.max_concurrent_bodies)
            return self._slots

    async def handle(self, request: Request) -> JSONResponse:
        header_id = _loggable(request.headers.get("x-fal-webhook-request-id"))
        try:
            signed = self.verifier.check_headers(request.headers)
            target = self._target(request.query_params, signed.user_id)
            size = self._declared_size(request)
            record = await self._read_and_verify(request, size)
            outcome = await run_in_threadpool(self._record, record, target)
        except WebhookVerificationError as err:
            log.warning("fal webhook rejected (401): %s [request_id=%s]", err.reason, header_id)
            return JSONResponse({"detail": "invalid webhook signature"}, status_code=401)
        except Rejected as err:
            log.warning(
                "fal webhook rejected (%d): %s [request_id=%s]", err.status_code, err.reason, header_id
            )
            return JSONResponse({"detail": err.reason}, status_code=err.status_code, headers=err.headers)
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

    # -- before the body ---------------------------------------------------------------------------

    def _target(self, query: Mapping[str, str], user_id: str) -> Target:
        """Query and user id checks; the user id header is trusted only once the signature passes."""
        settings = self.settings
        try:
            identity = TaskIdentity.from_query(query)
            channel = validate_channel(query["channel"]) if "channel" in query else None
        except WebhookUrlError as err:
            raise Rejected(400, f"bad callback URL: {err}") from None
        if identity is not None and channel is not None:
            raise Rejected(400, "bad callback URL: names both a task and a channel")
        allowed = settings.allowed_user_ids
        if allowed and user_id not in allowed:
            raise Rejected(403, f"fal user id {_loggable(user_id)!r} is not on the allow-list")
        if channel is not None:
            self._check_channel(channel, query.get(TOKEN_PARAM), user_id)
        if not allowed:
            if identity is None:
                raise Rejected(403, f"callback names no task and no allow-list is configured: {HOW_TO_ALLOW}")
            self._warn_no_allow_list_once()
        return Target(identity, channel, awaited_only=not allowed)

    def _check_channel(self, channel: str, token: str | None, user_id: str) -> None:
        settings = self.settings
        if not settings.allowed_user_ids:
            raise Rejected(
                403,
                f"channel callbacks are refused without a fal user id allow-list (this one came from "
                f"user id {_loggable(user_id)!r}): {HOW_TO_ALLOW}",
            )
        if settings.webhook_secret is None:
            raise Rejected(
                403,
                "channel callbacks are refused without a webhook secret: set the 'webhook_secret' "
                "extra of the fal connection (or [fal] webhook_secret) to a random string of at "
                "least 16 characters, and build channel URLs with channel_webhook_url()",
            )
        if not settings.webhook_secret.token_matches(channel, token):
            raise Rejected(403, f"missing or wrong token for channel {channel!r}")

    def _warn_no_allow_list_once(self) -> None:
        with self._lock:
            if self._warned_no_allow_list:
                return
            self._warned_no_allow_list = True
        log.warning(
            "fal webhook receiver: no fal user id allow-list; task callbacks are accepted only for a "
            "task deferred waiting for the signed request id, channel callbacks are refused. To "
            "accept only your own fal account's callbacks, %s",
            HOW_TO_ALLOW,
        )

    def _declared_size(self, request: Request) -> int | None:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        try:
            size = int(declared)
        except ValueError:
            raise Rejected(400, "invalid Content-Length") from None
        if size < 0:
            raise Rejected(400, "invalid Content-Length")
        if size > limit:
            raise Rejected(413, f"body of {size} bytes exceeds the {limit}-byte limit")
        return size

    # -- the body ----------------------------------------------------------------------------------

    async def _read_and_verify(self, request: Request, size: int | None) -> WebhookRecord:
        """Holds a slot while the body is in memory: read, signature, parse; the record is small."""
        settings = self.settings
        slots = self.slots
        try:
            await asyncio.wait_for(slots.acquire(), timeout=settings.body_slot_wait_seconds)
        except asyncio.TimeoutError:
            raise Rejected(503, "too many callbacks being read; retry later", {"Retry-After": "5"}) from None
        try:
            body = await self._read_body(request, size)
            verified = await self.verifier.averify(request.headers, body)
            return self._parse(body, verified.request_id, verified.user_id)
        finally:
            slots.release()

    async def _read_body(self, request: Request, size: int | None) -> bytearray:
        settings = self.settings
        try:
            body = await asyncio.wait_for(
                self._collect(request, settings.max_body_bytes, size),
                timeout=settings.body_read_timeout_seconds,
            )
        except asyncio.TimeoutError:
            raise Rejected(
                408,
                f"body not received within {settings.body_read_timeout_seconds:g} s",
                {"Connection": "close"},
            ) from None
        return body

    @staticmethod
    async def _collect(request: Request, limit: int, size: int | None) -> bytearray:
        """One buffer, allocated once when the size is declared: no chunk list, no regrowth copies."""
        if size is None:
            body = bytearray()
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise Rejected(413, f"body exceeds the {limit}-byte limit")
                body += chunk
            return body
        buffer, filled = bytearray(size), 0
        async for chunk in request.stream():
            if filled + len(chunk) > size:
                raise Rejected(400, "body is longer than its Content-Length")
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != size:
            raise Rejected(400, "body is shorter than its Content-Length")
        return buffer

    def _parse(self, body: bytes | bytearray, request_id: str, user_id: str) -> WebhookRecord:
        try:
            document: Any = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise Rejected(400, "body is not JSON (or nests too deep to parse)") from None
        if not isinstance(document, dict):
            raise Rejected(400, "body is not a JSON object")
        if json_depth(document) > MAX_JSON_DEPTH:
            raise Rejected(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
        if document.get("request_id") != request_id or not _REQUEST_ID.match(request_id):
            raise Rejected(400, "body request_id is missing or differs from the signed one")
        if document.get("status") not in ("OK", "ERROR"):
            raise Rejected(400, "body status is not OK or ERROR")
        return WebhookRecord.from_payload(
            document, user_id=user_id, payload_max_bytes=self.settings.payload_max_bytes
        )

    # -- the database -------------------------------------------------------------------------------

    def _record(self, record: WebhookRecord, target: Target) -> Outcome:
        """Runs in a worker thread: the ORM is synchronous."""
        from airflow.utils.session import create_session
        from sqlalchemy.exc import IntegrityError

        identity = target.identity
        if target.channel is not None:
            record = replace(record, channel=target.channel)
        if target.awaited_only and identity is not None:
            with create_session(scoped=False) as session:
                # A recorded request was ours when it was accepted: a redelivery stays a duplicate.
                known = record_exists(record.request_id, session=session)
                awaited = (
                    WakeOutcome.RESUMED if known else is_awaited(identity, record.request_id, session=session)
                )
            if awaited is not WakeOutcome.RESUMED:
                raise Rejected(
                    403,
                    f"no allow-list, and the named task does not wait for this request ({awaited.value}); "
                    f"{HOW_TO_ALLOW}",
                )
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
