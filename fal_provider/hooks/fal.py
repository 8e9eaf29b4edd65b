"""FalHook: every way of calling fal (queue, run, stream, realtime, upload), sync and async.

Each method describes its HTTP call once (``_calls.CallBuilder``); the sync method sends it with the
hook's own ``httpx.Client`` and its async twin, right below it, with the event loop's shared
``httpx.AsyncClient`` (one connection pool for every trigger on the loop). The twins change together.
Async methods never block the event loop: the connection comes from ``BaseHook.aget_connection``
and local files are read in a thread.
Retries, error mapping and key hygiene live in ``_transport``, so every call behaves the
same way: bad input is a :class:`~fal_provider.exceptions.FalInputError` (a ``ValueError`` that
Airflow does not retry) before any network call, fal's error answers become typed
:class:`~fal_provider.exceptions.FalError` subclasses, and the key is sent only to the connection's
configured fal origins (``_transport.request_headers``), never to a URL a request reference carried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

import httpx
from airflow.sdk import BaseHook
from websockets.asyncio.client import connect as ws_connect_async
from websockets.sync.client import connect as ws_connect

from fal_provider._compat import AirflowNotFoundException, amask_secret, mask_secret
from fal_provider.exceptions import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalInputError,
    FalNotFoundError,
    FalRealtimeError,
    FalTimeoutError,
)
from fal_provider.hooks import _upload
from fal_provider.hooks._calls import (
    DEFAULT_JWKS_URL,
    CallBuilder,
    ConnFields,
    FalSettings,
    Options,
    Status,
    build_options,
    encode_arguments,
    join_url,
    lookup_connection,
    media_download,
    resolve_settings,
)
from fal_provider.hooks._realtime import (
    MAX_BUFFERING_RANGE,
    WS_OPEN_ERRORS,
    WS_OPTIONS,
    AsyncRealtimeSession,
    RealtimeOpening,
    RealtimeSession,
    check_max_buffering,
    handshake_error,
    realtime_url,
)
from fal_provider.hooks._realtime_batch import (
    Progress,
    check_msgpack_inputs,
    is_session_drop,
    run_realtime_batch,
)
from fal_provider.hooks._sse import (
    aiter_model_events,
    aiter_status_events,
    iter_model_events,
    iter_status_events,
    preview,
    stream_error_from_event,
)
from fal_provider.hooks._transport import (
    NO_RETRY,
    Call,
    aread_limited,
    asend,
    close_shared_async_client,
    new_sync_client,
    read_limited,
    send,
    shared_async_client,
)
from fal_provider.hooks.platform import (
    MAX_PAGES,
    MODELS,
    BillingEvent,
    CostEstimate,
    FetchedResult,
    HistoryEntry,
    HistoryQuery,
    ModelInfo,
    Page,
    PlatformCalls,
    Price,
    batches,
    billable_units,
    cache_key,
    cached_prices,
    check_arguments,
    endpoint_ids,
    note_failure,
    recent_failure,
    remember_model,
    remember_prices,
)
from fal_provider.models import AppId, FalRequestRef, check_headers, check_path

#: What the operators (and TaskFlow code) use of fal's protocols, from this public module.
__all__ = [
    "DEFAULT_JWKS_URL",
    "MAX_BUFFERING_RANGE",
    "AsyncRealtimeSession",
    "FalHook",
    "FalRealtimeError",
    "FalSettings",
    "FetchedResult",
    "Progress",
    "RealtimeSession",
    "check_max_buffering",
    "check_msgpack_inputs",
    "check_submit",
    "fetch_media",
    "is_session_drop",
    "preview",
    "run_realtime_batch",
    "stream_error_from_event",
]


#: Status calls one hook keeps for the requests it polls (see ``FalHook._status_call``).
MAX_KEPT_STATUS_CALLS = 4096


class FalHook(BaseHook):
    """Talks to fal.ai (or the fal emulator) with the key of an Airflow connection of type ``fal``.

    Hook arguments override the connection's extras. Without a connection named ``fal_default``
    the hook still works from ``FAL_KEY`` (or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``) and fal's hosts.
    """

    conn_name_attr = "fal_conn_id"
    default_conn_name = "fal_default"
    conn_type = "fal"
    hook_name = "fal.ai"

    def __init__(
        self,
        fal_conn_id: str = default_conn_name,
        *,
        retry_limit: int | None = None,
        retry_max_wait: float | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        check_headers(headers, f"{type(self).__name__}(headers=...)")
        self.fal_conn_id = fal_conn_id
        self._overrides: dict[str, Any] = {
            "retry_limit": retry_limit,
            "retry_max_wait": retry_max_wait,
            "timeout": timeout,
            "headers": dict(headers) if headers else None,
        }
        self._client: httpx.Client | None = None
        self._status_calls: dict[tuple[FalRequestRef, bool], Call] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fal_conn_id={self.fal_conn_id!r})"

    @cached_property
    def _cdn_tokens(self) -> _upload.CdnTokenCache:
        """Made on the first upload: a hook that never uploads never touches the upload code."""
        return _upload.CdnTokenCache()

    __str__ = __repr__

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The provider info's form metadata, for form code that asks the hook instead."""
        from fal_provider import get_provider_info

        (connection_type,) = get_provider_info()["connection-types"]
        return {key.replace("-", "_"): value for key, value in connection_type["ui-field-behaviour"].items()}

    # -- settings ----------------------------------------------------------------------------------
    def _resolve(self, conn: Any, extras: Mapping[str, Any]) -> FalSettings:
        return resolve_settings(
            conn_id=self.fal_conn_id,
            password=getattr(conn, "password", None),
            host=getattr(conn, "host", None),
            extras=extras,
            overrides=self._overrides,
            conn_found=conn is not None,
        )

    def _missing_ok(self) -> bool:
        # Only the default connection may be absent: a named one that does not exist is a typo.
        return self.fal_conn_id == self.default_conn_name

    @cached_property
    def settings(self) -> FalSettings:
        try:
            conn = self.get_connection(self.fal_conn_id)
        except AirflowNotFoundException:
            if not self._missing_ok():
                raise
            conn = None
        settings = self._resolve(conn, conn.extra_dejson if conn is not None else {})
        mask_secret(settings.key)
        if settings.admin_key:
            mask_secret(settings.admin_key)
        return settings

    async def aget_settings(self) -> FalSettings:
        """Settings without blocking the event loop (``BaseHook.aget_connection``).

        The lookup is shared with the other hooks on this loop for a few seconds (``_calls.lookup_connection``):
        a triggerer starts ~1,000 hooks on the same connection at once.
        """
        if "settings" in self.__dict__:
            return self.__dict__["settings"]
        fields = await lookup_connection(self.fal_conn_id, _afetch_connection)
        settings = self._resolve(fields if fields.found else None, fields.extras)
        await amask_secret(settings.key)
        if settings.admin_key:
            await amask_secret(settings.admin_key)
        self.__dict__["settings"] = settings
        return settings

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def _http(self) -> httpx.Client:
        if self._client is None or self._client.is_closed:
            self._client = new_sync_client()
        return self._client

    def _calls(self) -> CallBuilder:
        return CallBuilder(self.settings, self.log)

    async def _acalls(self) -> CallBuilder:
        return CallBuilder(await self.aget_settings(), self.log)

    def _send(self, call: Call, *, stream: bool = False) -> httpx.Response:
        return send(self._http, call, self.settings, self.log, stream=stream)

    async def _asend(self, call: Call, *, stream: bool = False) -> httpx.Response:
        settings = await self.aget_settings()
        return await asend(shared_async_client(), call, settings, self.log, stream=stream)

    def _fetch(self, call: Call) -> Any:
        return call.decode(self._send(call))

    async def _afetch(self, call: Call) -> Any:
        return call.decode(await self._asend(call))

    def _submitted(self, ref: FalRequestRef) -> FalRequestRef:
        self.log.info("Submitted fal request %s to %s", ref.request_id, ref.app_id)
        return ref

    def _cancelled(self, call: Call, outcome: str) -> str:
        self.log.info("fal %s: %s", call.label, outcome)
        return outcome

    def close(self) -> None:
        """Close the hook's sync client. The async client is shared per loop and stays open."""
        if self._client is not None:
            self._client.close()
            self._client = None

    @staticmethod
    async def aclose_shared_client() -> None:
        """Close the running loop's shared async client (before a task's own event loop ends)."""
        await close_shared_async_client()

    # -- queue ------------------------------------------------------------------------------------
    def submit(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> FalRequestRef:
        """Queue a request on fal and return a small, credential-free reference to it.

        The POST is retried only where fal cannot have accepted the request: the connection was never
        established (``ConnectError``/``ConnectTimeout``/no free pool slot), a 429, or an ingress 503
        without ``x-fal-request-id``. A read timeout, a dropped connection or a 5xx after the body was
        sent may mean fal already queued it; sending it again would run (and bill) the model twice, so
        those raise instead, and the task-level reattach logic (which stores the request id) decides.
        """
        call = self._calls().submit(
            app_id, arguments, path=path, options=options, headers=headers, webhook_url=webhook_url
        )
        return self._submitted(self._fetch(call))

    async def asubmit(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> FalRequestRef:
        """Async twin of :meth:`submit`."""
        call = (await self._acalls()).submit(
            app_id, arguments, path=path, options=options, headers=headers, webhook_url=webhook_url
        )
        return self._submitted(await self._afetch(call))

    def request_ref(self, app_id: str, request_id: str) -> FalRequestRef:
        return self._calls().request_ref(app_id, request_id)

    def get_status(self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False) -> Status:
        return self._fetch(self._status_call(self._calls(), request, logs))

    async def aget_status(self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False) -> Status:
        """Async twin of :meth:`get_status`."""
        return await self._afetch(self._status_call(await self._acalls(), request, logs))

    def _status_call(
        self, calls: CallBuilder, request: FalRequestRef | Mapping[str, Any], logs: bool
    ) -> Call:
        """The status call for ``request``. A waiter asks about the same request on every poll, so
        calls are kept (they are immutable; a bounded set, for a hook that polls many requests):
        building one was a tenth of a poll's CPU."""
        key = (FalRequestRef.coerce(request), logs)
        call = self._status_calls.get(key)
        if call is None:
            if len(self._status_calls) >= MAX_KEPT_STATUS_CALLS:
                self._status_calls.clear()
            call = self._status_calls[key] = calls.status(key[0], logs=logs)
        return call

    def iter_status(
        self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False
    ) -> Iterator[Status]:
        """fal's SSE status stream; ends after COMPLETED, raises FalStreamError if it ends earlier."""
        call = self._calls().status_stream(request, logs=logs)
        response = self._send(call, stream=True)
        try:
            yield from iter_status_events(response, call.label)
        finally:
            response.close()

    async def aiter_status(
        self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False
    ) -> AsyncIterator[Status]:
        """Async twin of :meth:`iter_status`."""
        call = (await self._acalls()).status_stream(request, logs=logs)
        response = await self._asend(call, stream=True)
        try:
            async for status in aiter_status_events(response, call.label):
                yield status
        finally:
            await response.aclose()

    def get_result(self, request: FalRequestRef | Mapping[str, Any], *, max_bytes: int | None = None) -> Any:
        """``max_bytes``: refuse (``ResponseTooLarge``) a larger body before it is read whole."""
        return self.fetch_result(request, max_bytes=max_bytes).data

    async def aget_result(
        self, request: FalRequestRef | Mapping[str, Any], *, max_bytes: int | None = None
    ) -> Any:
        """Async twin of :meth:`get_result`."""
        return (await self.afetch_result(request, max_bytes=max_bytes)).data

    def fetch_result(
        self, request: FalRequestRef | Mapping[str, Any], *, max_bytes: int | None = None
    ) -> FetchedResult:
        """The result (what :meth:`get_result` returns) and the units fal billed for it, from the
        result fetch's ``x-fal-billable-units`` header (``None`` when fal sent none)."""
        call = self._calls().result(request)
        if not max_bytes:
            return _fetched(call, self._send(call))
        response = self._send(call, stream=True)
        try:
            return _fetched(call, read_limited(response, max_bytes, call.label))
        finally:
            response.close()

    async def afetch_result(
        self, request: FalRequestRef | Mapping[str, Any], *, max_bytes: int | None = None
    ) -> FetchedResult:
        """Async twin of :meth:`fetch_result`."""
        call = (await self._acalls()).result(request)
        if not max_bytes:
            return _fetched(call, await self._asend(call))
        response = await self._asend(call, stream=True)
        try:
            return _fetched(call, await aread_limited(response, max_bytes, call.label))
        finally:
            await response.aclose()

    def cancel(self, request: FalRequestRef | Mapping[str, Any]) -> str:
        """``CANCELLATION_REQUESTED``, ``ALREADY_COMPLETED`` or ``NOT_FOUND``; raises on other errors."""
        call = self._calls().cancel(request)
        return self._cancelled(call, self._fetch(call))

    async def acancel(self, request: FalRequestRef | Mapping[str, Any]) -> str:
        """Async twin of :meth:`cancel`."""
        call = (await self._acalls()).cancel(request)
        return self._cancelled(call, await self._afetch(call))

    # -- direct calls ------------------------------------------------------------------------------
    def run(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Synchronous call on the run host; retried like submit (it starts paid work)."""
        return self.run_with_usage(
            app_id, arguments, path=path, options=options, headers=headers, timeout=timeout
        ).data

    async def arun(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Async twin of :meth:`run`."""
        fetched = await self.arun_with_usage(
            app_id, arguments, path=path, options=options, headers=headers, timeout=timeout
        )
        return fetched.data

    def run_with_usage(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> FetchedResult:
        """:meth:`run`, with the units fal billed (``x-fal-billable-units``) and the request id."""
        call = self._calls().run(
            app_id, arguments, path=path, options=options, headers=headers, timeout=timeout
        )
        return _fetched(call, self._send(call))

    async def arun_with_usage(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> FetchedResult:
        """Async twin of :meth:`run_with_usage`."""
        call = (await self._acalls()).run(
            app_id, arguments, path=path, options=options, headers=headers, timeout=timeout
        )
        return _fetched(call, await self._asend(call))

    def stream(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "/stream",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Decoded JSON events of the app's ``/stream`` endpoint, until the server closes it."""
        call = self._calls().stream(app_id, arguments, path=path, headers=headers, timeout=timeout)
        response = self._send(call, stream=True)
        try:
            yield from iter_model_events(response, call.label)
        finally:
            response.close()

    async def astream(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "/stream",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Async twin of :meth:`stream`."""
        call = (await self._acalls()).stream(app_id, arguments, path=path, headers=headers, timeout=timeout)
        response = await self._asend(call, stream=True)
        try:
            async for event in aiter_model_events(response, call.label):
                yield event
        finally:
            await response.aclose()

    # -- realtime ----------------------------------------------------------------------------------
    @contextmanager
    def realtime(
        self,
        app_id: str,
        *,
        path: str = "/realtime",
        max_buffering: int | None = None,
        token_expiration: int = 120,
    ) -> Iterator[RealtimeSession]:
        """A msgpack WebSocket session with the app, authenticated by a short-lived app-scoped token.

        Each call fetches a new token, used once for the handshake: an open session keeps working
        after ``token_expiration``; to reconnect after a drop, call ``realtime()`` again.
        """
        opening = RealtimeOpening.plan(self._calls(), app_id, path, max_buffering, token_expiration)
        token = self._fetch(opening.token_call)
        url = realtime_url(opening.run_url, opening.app, opening.path, token, opening.max_buffering)
        try:
            connection = ws_connect(url, **WS_OPTIONS)
        except WS_OPEN_ERRORS as exc:
            raise handshake_error(exc, opening.app) from None
        session = RealtimeSession(connection, opening.app)
        try:
            yield session
        finally:
            session.close()

    @asynccontextmanager
    async def arealtime(
        self,
        app_id: str,
        *,
        path: str = "/realtime",
        max_buffering: int | None = None,
        token_expiration: int = 120,
    ) -> AsyncIterator[AsyncRealtimeSession]:
        """Async twin of :meth:`realtime`."""
        opening = RealtimeOpening.plan(await self._acalls(), app_id, path, max_buffering, token_expiration)
        token = await self._afetch(opening.token_call)
        url = realtime_url(opening.run_url, opening.app, opening.path, token, opening.max_buffering)
        try:
            connection = await ws_connect_async(url, **WS_OPTIONS)
        except WS_OPEN_ERRORS as exc:
            raise handshake_error(exc, opening.app) from None
        session = AsyncRealtimeSession(connection, opening.app)
        try:
            yield session
        finally:
            await session.close()

    async def arealtime_batch(
        self,
        app_id: str,
        inputs: Sequence[Mapping[str, Any]],
        *,
        path: str = "/realtime",
        max_buffering: int | None = None,
        token_expiration: int = 120,
        max_in_flight: int = 1,
        message_timeout: float | None = 60.0,
        max_reconnects: int = 3,
        progress: Progress | None = None,
    ) -> list[Any]:
        """One output per input, in input order, through :meth:`arealtime` sessions.

        A dropped session (or fal's idle ``TIMEOUT``) is reopened with a fresh token, at most
        ``max_reconnects`` times, and the inputs whose answers were lost are sent again; an
        ``x-fal-error`` from the app ends the batch with the hook's typed error. Outputs are matched
        to inputs by order (see :mod:`fal_provider.hooks._realtime_batch`), so keep
        ``max_in_flight=1`` for an app that may skip or reorder answers. From TaskFlow code:
        ``asyncio.run(FalHook().arealtime_batch(app_id, inputs))``.
        """
        return await run_realtime_batch(
            lambda: self.arealtime(
                app_id, path=path, max_buffering=max_buffering, token_expiration=token_expiration
            ),
            inputs,
            app_id=app_id,
            max_in_flight=max_in_flight,
            message_timeout=message_timeout,
            max_reconnects=max_reconnects,
            progress=progress,
        )

    # -- upload ------------------------------------------------------------------------------------
    def upload(
        self,
        data: bytes | str | os.PathLike[str],
        *,
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> str:
        """Upload bytes or a local file to fal's CDN and return its URL (models take file URLs).

        Above ``_upload.MULTIPART_THRESHOLD`` (100 MiB) the upload goes in parts, like fal's client:
        a local file is then read one part at a time, up to ``MULTIPART_CONCURRENCY`` parts in flight.
        """
        source = _upload.open_source(data, file_name)
        kind = _upload.guess_content_type(content_type, source.name)
        token = self._cdn_tokens.get() or self._cdn_tokens.remember(
            self._fetch(self._calls().storage_token())
        )
        if _upload.needs_multipart(source):
            return self._upload_parts(
                _upload.MultipartUpload(self.settings, source, content_type=kind, token=token)
            )
        return self._fetch(
            _upload.single_upload(self.settings, source, source.read(), content_type=kind, token=token)
        )

    async def aupload(
        self,
        data: bytes | str | os.PathLike[str],
        *,
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> str:
        """Async twin of :meth:`upload` (local files are read in a thread)."""
        source = await asyncio.to_thread(_upload.open_source, data, file_name)
        kind = _upload.guess_content_type(content_type, source.name)
        token = self._cdn_tokens.get() or self._cdn_tokens.remember(
            await self._afetch((await self._acalls()).storage_token())
        )
        settings = await self.aget_settings()
        if _upload.needs_multipart(source):
            return await self._aupload_parts(
                _upload.MultipartUpload(settings, source, content_type=kind, token=token)
            )
        payload = await asyncio.to_thread(source.read)
        return await self._afetch(
            _upload.single_upload(settings, source, payload, content_type=kind, token=token)
        )

    def _upload_parts(self, upload: _upload.MultipartUpload) -> str:
        self._fetch(upload.create())
        with ThreadPoolExecutor(max_workers=upload.concurrency, thread_name_prefix="fal-upload") as pool:
            futures = [
                pool.submit(lambda n: self._fetch(upload.part(n)), number) for number in upload.numbers
            ]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:
                for future in futures:  # do not start parts of an upload that already failed
                    future.cancel()
                raise
        return self._fetch(upload.complete())

    async def _aupload_parts(self, upload: _upload.MultipartUpload) -> str:
        await self._afetch(upload.create())
        gate = asyncio.Semaphore(upload.concurrency)

        async def put(number: int) -> None:
            async with gate:
                await self._afetch(await asyncio.to_thread(upload.part, number))  # reads from disk

        tasks = [asyncio.ensure_future(put(number)) for number in upload.numbers]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # do not leave parts of an upload that already failed running
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return await self._afetch(upload.complete())

    # -- media -------------------------------------------------------------------------------------
    def fetch_media(self, url: str, timeout: float = 120.0) -> tuple[bytes, str | None]:
        """Download a file a result points at, with the hook's client and retries, never the key."""
        return self._fetch(media_download(url, timeout))

    # -- Platform API (prices, models, billing, history) -------------------------------------------
    def _platform(self, *, quick: bool = False) -> PlatformCalls:
        return PlatformCalls(self._calls(), quick=quick)

    async def _aplatform(self, *, quick: bool = False) -> PlatformCalls:
        return PlatformCalls(await self._acalls(), quick=quick)

    def get_model_info(self, endpoint_id: str) -> ModelInfo:
        """The model's catalogue entry (input schema, ``duration_estimate``, deprecation), cached
        per process for the connection's ``platform_cache_ttl``; ``FalNotFoundError`` if fal has none."""
        return self._model_info(self._platform(), endpoint_id)

    async def aget_model_info(self, endpoint_id: str) -> ModelInfo:
        """Async twin of :meth:`get_model_info`."""
        return await self._amodel_info(await self._aplatform(), endpoint_id)

    def _model_info(self, platform: PlatformCalls, endpoint_id: str) -> ModelInfo:
        (endpoint,) = endpoint_ids(endpoint_id, "endpoint_id")
        cached = MODELS.get(cache_key(platform.settings, endpoint))
        if cached is not None:
            return cached
        return remember_model(platform.settings, endpoint, self._fetch(platform.models([endpoint])))

    async def _amodel_info(self, platform: PlatformCalls, endpoint_id: str) -> ModelInfo:
        (endpoint,) = endpoint_ids(endpoint_id, "endpoint_id")
        cached = MODELS.get(cache_key(platform.settings, endpoint))
        if cached is not None:
            return cached
        return remember_model(platform.settings, endpoint, await self._afetch(platform.models([endpoint])))

    def get_pricing(self, endpoint_ids: str | Sequence[str]) -> dict[str, Price]:
        """Unit prices by endpoint id (fal takes 50 ids a call; longer lists go in several calls),
        cached per process. Endpoints fal has no price for are missing from the answer."""
        return self._pricing(self._platform(), endpoint_ids)

    async def aget_pricing(self, endpoint_ids: str | Sequence[str]) -> dict[str, Price]:
        """Async twin of :meth:`get_pricing` (the calls for more than 50 ids run concurrently)."""
        return await self._apricing(await self._aplatform(), endpoint_ids)

    def _pricing(self, platform: PlatformCalls, ids: str | Sequence[str]) -> dict[str, Price]:
        prices, missing = cached_prices(platform.settings, endpoint_ids(ids))
        for batch in batches(missing):
            prices.update(remember_prices(platform.settings, self._fetch(platform.pricing(batch))))
        return prices

    async def _apricing(self, platform: PlatformCalls, ids: str | Sequence[str]) -> dict[str, Price]:
        prices, missing = cached_prices(platform.settings, endpoint_ids(ids))
        pages = await asyncio.gather(*(self._afetch(platform.pricing(b)) for b in batches(missing)))
        for page in pages:
            prices.update(remember_prices(platform.settings, page))
        return prices

    def price_or_none(self, endpoint_id: str) -> Price | None:
        """:meth:`get_pricing` for one endpoint that never raises: ``None`` when the price is unknown
        or the Platform API failed (the reason is logged once). Cost lines use this, so a pricing
        outage never fails an inference."""
        try:
            platform = self._platform(quick=True)
            if recent_failure(platform.settings, f"price of {endpoint_id}"):
                return None
            return self._pricing(platform, [endpoint_id]).get(endpoint_id)
        except FalError as err:
            note_failure(self.settings, f"price of {endpoint_id}", err, self.log, "its cost is unknown")
            return None

    async def aprice_or_none(self, endpoint_id: str) -> Price | None:
        """Async twin of :meth:`price_or_none`."""
        try:
            platform = await self._aplatform(quick=True)
            if recent_failure(platform.settings, f"price of {endpoint_id}"):
                return None
            return (await self._apricing(platform, [endpoint_id])).get(endpoint_id)
        except FalError as err:
            settings = await self.aget_settings()
            note_failure(settings, f"price of {endpoint_id}", err, self.log, "its cost is unknown")
            return None

    def estimate_cost(
        self, quantities: Mapping[str, float], *, estimate_type: str = "unit_price"
    ) -> CostEstimate:
        """fal's estimate for ``{endpoint_id: quantity}``: units with ``estimate_type="unit_price"``,
        calls with ``"historical_api_price"`` (fal's average cost per call of that endpoint)."""
        return self._fetch(self._platform().estimate(quantities, estimate_type))

    async def aestimate_cost(
        self, quantities: Mapping[str, float], *, estimate_type: str = "unit_price"
    ) -> CostEstimate:
        """Async twin of :meth:`estimate_cost`."""
        return await self._afetch((await self._aplatform()).estimate(quantities, estimate_type))

    def get_billing_events(
        self,
        request_ids: Sequence[str],
        *,
        endpoint_id: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
    ) -> list[BillingEvent]:
        """What fal charged for these requests (ADMIN key: the connection extra ``admin_api_key``), every
        page; a request fal did not charge for (a server error) has no event."""
        platform = self._platform()
        events: list[BillingEvent] = []
        for batch in batches(list(request_ids)):
            events += self._pages(
                platform.billing_events(batch, endpoint_id=endpoint_id, start=start, end=end)
            )
        return events

    async def aget_billing_events(
        self,
        request_ids: Sequence[str],
        *,
        endpoint_id: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
    ) -> list[BillingEvent]:
        """Async twin of :meth:`get_billing_events`."""
        platform = await self._aplatform()
        events: list[BillingEvent] = []
        for batch in batches(list(request_ids)):
            call = platform.billing_events(batch, endpoint_id=endpoint_id, start=start, end=end)
            events += await self._apages(call)
        return events

    def get_request_history(
        self,
        endpoint_id: str,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        *,
        with_payloads: bool = True,
        status: str | None = None,
        request_id: str | None = None,
        limit: int | None = None,
    ) -> list[HistoryEntry]:
        """fal's request history of an endpoint (default window: fal's last 24 hours), every page;
        ``with_payloads`` adds each request's JSON input and output where fal stored them."""
        query = HistoryQuery(start, end, with_payloads, status, request_id, limit)
        return self._pages(self._platform().history(endpoint_id, query))

    async def aget_request_history(
        self,
        endpoint_id: str,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        *,
        with_payloads: bool = True,
        status: str | None = None,
        request_id: str | None = None,
        limit: int | None = None,
    ) -> list[HistoryEntry]:
        """Async twin of :meth:`get_request_history`."""
        query = HistoryQuery(start, end, with_payloads, status, request_id, limit)
        return await self._apages((await self._aplatform()).history(endpoint_id, query))

    def _pages(self, call: Call | None) -> list[Any]:
        """The items of every page of a listing, following its cursor (at most MAX_PAGES pages)."""
        items: list[Any] = []
        for _ in range(MAX_PAGES):
            if call is None:
                break
            page: Page = self._fetch(call)
            items += page.items
            call = page.next_call
        return items

    async def _apages(self, call: Call | None) -> list[Any]:
        items: list[Any] = []
        for _ in range(MAX_PAGES):
            if call is None:
                break
            page: Page = await self._afetch(call)
            items += page.items
            call = page.next_call
        return items

    def validate_arguments(self, app_id: str, arguments: Mapping[str, Any], *, path: str = "") -> None:
        """Check ``arguments`` against the model's input schema before anything is paid for.

        A missing required field or a wrong type raises ``FalInputError`` naming the field; a
        deprecated model logs a warning with fal's replacement. Where no schema is available (the
        Platform API is down or not configured, a private app) nothing is checked: the reason is
        logged once and the request goes ahead, as it would without the check.
        """
        endpoint = _endpoint_of(app_id, path)
        try:
            platform = self._platform(quick=True)
            if not platform.settings.platform_url or recent_failure(
                platform.settings, f"schema of {endpoint}"
            ):
                return
            info = self._model_info(platform, endpoint)
        except FalInputError:
            raise
        except FalError as err:
            note_failure(self.settings, f"schema of {endpoint}", err, self.log, "arguments are not checked")
            return
        _check_model(info, arguments, self.log)

    async def avalidate_arguments(self, app_id: str, arguments: Mapping[str, Any], *, path: str = "") -> None:
        """Async twin of :meth:`validate_arguments`."""
        endpoint = _endpoint_of(app_id, path)
        try:
            platform = await self._aplatform(quick=True)
            if not platform.settings.platform_url or recent_failure(
                platform.settings, f"schema of {endpoint}"
            ):
                return
            info = await self._amodel_info(platform, endpoint)
        except FalInputError:
            raise
        except FalError as err:
            settings = await self.aget_settings()
            note_failure(settings, f"schema of {endpoint}", err, self.log, "arguments are not checked")
            return
        _check_model(info, arguments, self.log)

    # -- connection test ---------------------------------------------------------------------------
    #: A request id no one has: its status is a cheap authenticated GET that starts no paid work.
    PROBE_REQUEST = {"app_id": "fal-ai/any-llm", "request_id": "00000000-0000-4000-8000-000000000000"}

    def test_connection(self) -> tuple[bool, str]:
        """Two cheap authenticated calls, no retries: the queue host every inference uses (the status
        of a request id no one has: fal answers 404 to a key it accepts, 401/403 to one it rejects)
        and the REST host (a CDN storage token, which uploads and realtime need).

        The message says which of "no key", "key rejected" and "host unreachable" it is, naming the
        connection field to fix; never the key.
        """
        try:
            settings = self.settings
            calls = self._calls()
            probes = (
                ("queue", settings.queue_url, calls.status(self.PROBE_REQUEST)),
                ("REST", settings.rest_url, calls.storage_token()),
            )
            for name, url, call in probes:
                problem = self._probe(dataclasses.replace(call, policy=NO_RETRY), name, url)
                if problem:
                    return False, problem
        except FalError as err:  # no key, a malformed connection
            return False, f"Connection {self.fal_conn_id!r}: {err}"
        return (
            True,
            f"fal accepted the API key of {self.fal_conn_id!r} at {settings.queue_url} and {settings.rest_url}",
        )

    def _probe(self, call: Call, name: str, url: str) -> str | None:
        """``None`` when ``call`` proves the key works on that host, else what is wrong."""
        where = "the Queue base URL (host field)" if name == "queue" else "the rest_url extra"
        try:
            self._send(call)
        except FalNotFoundError:
            return None  # the key was accepted; the made-up request is unknown, as it should be
        except FalAuthError as err:
            return (
                f"fal rejected the API key of connection {self.fal_conn_id!r} at {url} (HTTP "
                f"{err.http_status}): check the API Key (password) field"
            )
        except (FalConnectionError, FalTimeoutError) as err:
            return f"Could not reach fal's {name} host {url} ({type(err).__name__}): check {where} and the network"
        except FalError as err:
            return f"fal's {name} host {url} answered with an error: {err}"
        return None


def _fetched(call: Call, response: httpx.Response) -> FetchedResult:
    return FetchedResult(
        data=call.decode(response),
        billable_units=billable_units(response),
        request_id=response.headers.get("x-fal-request-id"),
    )


def _endpoint_of(app_id: str, path: str) -> str:
    """The endpoint id the catalogue knows a call by: the app id plus its sub-path."""
    app = AppId.parse(app_id)
    return join_url(app.full, check_path(path)) if path else app.full


def _check_model(info: ModelInfo, arguments: Mapping[str, Any], log: Any) -> None:
    if info.deprecated:
        log.warning(
            "fal model %s is deprecated%s",
            info.endpoint_id,
            f"; fal recommends {info.replacement}" if info.replacement else "",
        )
    check_arguments(info, arguments)


def check_submit(app_id: str, arguments: Any, options: Options = None) -> None:
    """Run the checks a submit runs before its POST (app id, options, JSON body), with no I/O,
    so a caller can fail on bad input before anything that could be paid for."""
    app = AppId.parse(app_id)
    build_options(options)
    encode_arguments(arguments, app)


def fetch_media(url: str, timeout: float = 120.0) -> tuple[bytes, str | None]:
    """:meth:`FalHook.fetch_media` for code without a hook: same call, retries and errors, no key."""
    call = media_download(url, timeout)
    with new_sync_client() as client:
        return call.decode(send(client, call, None, _MEDIA_LOG))


_MEDIA_LOG = logging.getLogger(__name__)


def _loads(extra: str | None) -> dict[str, Any]:
    try:
        value = json.loads(extra) if extra else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _afetch_connection(conn_id: str) -> ConnFields:
    """Only the default connection may be absent (env fallback); a missing named one raises."""
    try:
        conn = await _aget_connection(conn_id)
    except AirflowNotFoundException:
        if conn_id != FalHook.default_conn_name:
            raise
        return ConnFields(found=False)
    extras = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else _loads(conn.extra)
    return ConnFields(
        found=True, password=conn.password, host=conn.host, extras=MappingProxyType(dict(extras))
    )


async def _aget_connection(conn_id: str) -> Any:
    return await BaseHook.aget_connection(conn_id)
