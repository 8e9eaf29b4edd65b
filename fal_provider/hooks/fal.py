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
from functools import cached_property
from types import MappingProxyType
from typing import Any

import httpx
from airflow.sdk import BaseHook
from websockets.asyncio.client import connect as ws_connect_async
from websockets.sync.client import connect as ws_connect

from fal_provider._compat import AirflowNotFoundException, amask_secret, mask_secret
from fal_provider.exceptions import FalAuthError, FalError, FalRealtimeError
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
from fal_provider.models import AppId, FalRequestRef, check_headers

#: What the operators (and TaskFlow code) use of fal's protocols, from this public module.
__all__ = [
    "DEFAULT_JWKS_URL",
    "MAX_BUFFERING_RANGE",
    "AsyncRealtimeSession",
    "FalHook",
    "FalRealtimeError",
    "FalSettings",
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
        self._cdn_tokens = _upload.CdnTokenCache()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fal_conn_id={self.fal_conn_id!r})"

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
        return self._fetch(self._calls().status(request, logs=logs))

    async def aget_status(self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False) -> Status:
        """Async twin of :meth:`get_status`."""
        return await self._afetch((await self._acalls()).status(request, logs=logs))

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
        call = self._calls().result(request)
        if not max_bytes:
            return self._fetch(call)
        response = self._send(call, stream=True)
        try:
            return call.decode(read_limited(response, max_bytes, call.label))
        finally:
            response.close()

    async def aget_result(
        self, request: FalRequestRef | Mapping[str, Any], *, max_bytes: int | None = None
    ) -> Any:
        """Async twin of :meth:`get_result`."""
        call = (await self._acalls()).result(request)
        if not max_bytes:
            return await self._afetch(call)
        response = await self._asend(call, stream=True)
        try:
            return call.decode(await aread_limited(response, max_bytes, call.label))
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
        call = self._calls().run(
            app_id, arguments, path=path, options=options, headers=headers, timeout=timeout
        )
        return self._fetch(call)

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
        call = (await self._acalls()).run(
            app_id, arguments, path=path, options=options, headers=headers, timeout=timeout
        )
        return await self._afetch(call)

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

    # -- connection test ---------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """One authenticated call (a CDN storage token): proves the key and the REST host work."""
        try:
            settings = self.settings
            call = dataclasses.replace(self._calls().storage_token(), policy=NO_RETRY)
            self._send(call)
        except FalAuthError as err:
            return (
                False,
                f"fal rejected the API key of connection {self.fal_conn_id!r} (HTTP {err.http_status})",
            )
        except FalError as err:
            return False, str(err)
        except Exception as err:
            return False, f"Could not reach fal: {type(err).__name__}: {err}"
        return True, f"Connection {self.fal_conn_id!r} authenticated with fal at {settings.rest_url}"


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
