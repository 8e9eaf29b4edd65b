"""The transport behind a loop's shared ``httpx.AsyncClient``: many small pools instead of one big one.

Why not one pool of 1,024 connections: httpcore's pool re-examines every connection (and, for each
idle one, every connection again) each time a request starts or a response closes, and every queued
request against every connection. With ~1,000 triggers on a triggerer loop that made the pool
quadratic: profiled at 1,000 triggers it took about 70 % of the process's CPU, and completion
detection lagged ~25 s behind fal. So:

* short calls (status, result, cancel, submit...) go to one of ``shards`` small pools, and a loop-wide
  semaphore admits no more calls than there are connections, so httpcore's own queue stays empty and
  each pool operation looks at a handful of connections;
* a call marked :data:`LONG_LIVED` (status and output SSE streams, which hold their connection for
  the whole wait) gets a connection of its own, closed with the response: pooling it buys nothing
  and would make every other pool operation scan it.

One SSL context is shared by all pools, so a per-stream connection does not rebuild it.
"""

from __future__ import annotations

import asyncio
import ssl
from functools import lru_cache

import httpx

#: Request extension that routes a call to a dedicated connection (see module docstring).
LONG_LIVED = "fal_long_lived"
#: 16 pools x 8 connections: up to 128 short calls in flight per loop, each pool scan stays tiny.
SHARDS = 16
PER_SHARD = 8
KEEPALIVE_EXPIRY = 30.0


@lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """Building a context (loading the CA bundle) costs milliseconds; do it once per process."""
    return httpx.create_ssl_context()


class _ReleasingStream(httpx.AsyncByteStream):
    """Gives back the admission slot (and closes a dedicated transport) when the body is closed."""

    def __init__(
        self,
        stream: httpx.AsyncByteStream,
        on_close: list[httpx.AsyncBaseTransport | asyncio.Semaphore | _Shard],
    ) -> None:
        self._stream = stream
        self._on_close = on_close

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await _release(self._on_close)


class _Shard:
    def __init__(self) -> None:
        self.in_flight = 0
        self.transport = httpx.AsyncHTTPTransport(
            verify=shared_ssl_context(),
            limits=httpx.Limits(
                max_connections=PER_SHARD,
                max_keepalive_connections=PER_SHARD,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
        )


def dedicated_transport() -> httpx.AsyncBaseTransport:
    """One connection, not kept alive: it lives exactly as long as the stream it carries."""
    return httpx.AsyncHTTPTransport(
        verify=shared_ssl_context(),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )


async def _admit(admission: asyncio.Semaphore, request: httpx.Request) -> None:
    """Wait for a free connection no longer than the request's pool timeout, like httpcore would."""
    pool_timeout = (request.extensions.get("timeout") or {}).get("pool")
    try:
        await asyncio.wait_for(admission.acquire(), timeout=pool_timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise httpx.PoolTimeout("No free connection in the shared pool within the pool timeout") from None


async def _release(items: list[httpx.AsyncBaseTransport | asyncio.Semaphore | _Shard]) -> None:
    while items:
        item = items.pop()
        if isinstance(item, asyncio.Semaphore):
            item.release()
        elif isinstance(item, _Shard):
            item.in_flight -= 1
        else:
            await item.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """Route each request to the least busy small pool, or to its own connection if long-lived."""

    def __init__(self, shards: int = SHARDS, per_shard: int = PER_SHARD) -> None:
        self._shards = [_Shard() for _ in range(shards)]
        # Created lazily: a semaphore binds to the loop that first waits on it.
        self._admission: asyncio.Semaphore | None = None
        self._capacity = shards * per_shard

    @property
    def capacity(self) -> int:
        """Short calls in flight at once; more wait in FIFO order for a free connection."""
        return self._capacity

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.extensions.get(LONG_LIVED):
            return await self._dedicated(request)
        if self._admission is None:
            self._admission = asyncio.Semaphore(self._capacity)
        admission = self._admission
        await _admit(admission, request)
        # Admission guarantees a shard below PER_SHARD in flight.
        shard = min(self._shards, key=lambda s: s.in_flight)
        shard.in_flight += 1
        on_close: list[httpx.AsyncBaseTransport | asyncio.Semaphore | _Shard] = [admission, shard]
        return await self._send(shard.transport, request, on_close)

    async def _dedicated(self, request: httpx.Request) -> httpx.Response:
        transport = dedicated_transport()
        return await self._send(transport, request, [transport])

    @staticmethod
    async def _send(
        transport: httpx.AsyncBaseTransport,
        request: httpx.Request,
        on_close: list[httpx.AsyncBaseTransport | asyncio.Semaphore | _Shard],
    ) -> httpx.Response:
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            await _release(on_close)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, on_close)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()
