"""Async twins of FalHook's calls, for triggers and async tasks.

They build exactly the same calls as the sync methods and never block the event loop: the
connection comes from ``BaseHook.aget_connection``, local files are read in a thread, and HTTP goes
through the loop's shared ``httpx.AsyncClient`` (one connection pool for every trigger on the loop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import connect as ws_connect_async

from fal_provider.hooks import _upload
from fal_provider.hooks._calls import CallBuilder, Options, Status
from fal_provider.hooks._limited import aread_limited
from fal_provider.hooks._realtime import (
    WS_OPEN_ERRORS,
    WS_OPTIONS,
    AsyncRealtimeSession,
    RealtimeOpening,
    handshake_error,
    realtime_url,
)
from fal_provider.hooks._settings import FalSettings
from fal_provider.hooks._sse import aiter_model_events, aiter_status_events
from fal_provider.hooks._transport import Call, asend, close_shared_async_client, shared_async_client
from fal_provider.models import FalRequestRef


class FalAsyncMixin:
    """The ``a*`` methods of :class:`~fal_provider.hooks.fal.FalHook`, and the logging both halves share."""

    log: Any
    _cdn_tokens: _upload.CdnTokenCache

    async def aget_settings(self) -> FalSettings:  # implemented by FalHook
        raise NotImplementedError

    @staticmethod
    async def aclose_shared_client() -> None:
        """Close the running loop's shared async client (end of a test or of a loop)."""
        await close_shared_async_client()

    async def _acalls(self) -> CallBuilder:
        return CallBuilder(await self.aget_settings(), self.log)

    async def _asend(self, call: Call, *, stream: bool = False) -> httpx.Response:
        settings = await self.aget_settings()
        return await asend(shared_async_client(), call, settings, self.log, stream=stream)

    async def _afetch(self, call: Call) -> Any:
        return call.decode(await self._asend(call))

    def _submitted(self, ref: FalRequestRef) -> FalRequestRef:
        self.log.info("Submitted fal request %s to %s", ref.request_id, ref.app_id)
        return ref

    def _cancelled(self, call: Call, outcome: str) -> str:
        self.log.info("fal %s: %s", call.label, outcome)
        return outcome

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
        call = (await self._acalls()).submit(
            app_id, arguments, path=path, options=options, headers=headers, webhook_url=webhook_url
        )
        return self._submitted(await self._afetch(call))

    async def aget_status(self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False) -> Status:
        return await self._afetch((await self._acalls()).status(request, logs=logs))

    async def aiter_status(
        self, request: FalRequestRef | Mapping[str, Any], *, logs: bool = False
    ) -> AsyncIterator[Status]:
        call = (await self._acalls()).status_stream(request, logs=logs)
        response = await self._asend(call, stream=True)
        try:
            async for status in aiter_status_events(response, call.label):
                yield status
        finally:
            await response.aclose()

    async def aget_result(
        self, request: FalRequestRef | Mapping[str, Any], *, max_bytes: int | None = None
    ) -> Any:
        call = (await self._acalls()).result(request)
        if not max_bytes:
            return await self._afetch(call)
        response = await self._asend(call, stream=True)
        try:
            return call.decode(await aread_limited(response, max_bytes, call.label))
        finally:
            await response.aclose()

    async def acancel(self, request: FalRequestRef | Mapping[str, Any]) -> str:
        call = (await self._acalls()).cancel(request)
        return self._cancelled(call, await self._afetch(call))

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
        builder = await self._acalls()
        return await self._afetch(
            builder.run(app_id, arguments, path=path, options=options, headers=headers, timeout=timeout)
        )

    async def astream(
        self,
        app_id: str,
        arguments: Mapping[str, Any],
        *,
        path: str = "/stream",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        call = (await self._acalls()).stream(app_id, arguments, path=path, headers=headers, timeout=timeout)
        response = await self._asend(call, stream=True)
        try:
            async for event in aiter_model_events(response, call.label):
                yield event
        finally:
            await response.aclose()

    @asynccontextmanager
    async def arealtime(
        self,
        app_id: str,
        *,
        path: str = "/realtime",
        max_buffering: int | None = None,
        token_expiration: int = 120,
    ) -> AsyncIterator[AsyncRealtimeSession]:
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

    async def aupload(
        self,
        data: bytes | str | os.PathLike[str],
        *,
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> str:
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
