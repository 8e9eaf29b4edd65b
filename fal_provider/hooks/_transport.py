"""HTTP clients and the one place where a request is sent, retried and turned into a typed error.

Clients: a hook owns one ``httpx.Client`` (a worker task runs one hook at a time). Triggers create
many hooks on one event loop, so async calls share ONE ``httpx.AsyncClient`` per loop, whatever the
connection: credentials and timeouts travel with each request, never with the client. Its transport
(the pools section below) splits the connections into small pools, because one big httpcore pool costs CPU
quadratic in its size once ~1,000 triggers use it.

The key: a :class:`Call` never holds it. :func:`request_headers`, the one place that adds
``Authorization: Key ...``, adds it only when the call's URL (parsed as httpx parses it) is on one of
the connection's configured origins (``FalSettings.key_origins``: queue, run, REST, CDN; scheme, host
and port), and refuses the call otherwise; :func:`send` and :func:`asend` use it for every call, so a
new call cannot forget the check. Calls that must not carry the key (CDN uploads to URLs fal's
storage API hands back, which may be on other hosts) say ``with_key=False``. Redirects are followed,
and httpx drops ``Authorization`` when one leaves the origin.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import ssl
import sys
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httptools
import httpx

from fal_provider.exceptions import (
    FalConnectionError,
    FalError,
    FalInputError,
    FalMissingCredentialsError,
    FalTimeoutError,
    ResponseTooLarge,
    error_from_response,
    parse_retry_after,
)
from fal_provider.models import check_headers

if TYPE_CHECKING:
    from fal_provider.hooks._calls import FalSettings  # a type only: _calls builds on this module


# ---------------------------------------------------------------------------
# Pools: the async transport split into small shards
# The transport behind a loop's shared ``httpx.AsyncClient``: many small pools instead of one big one.
#
# Why not one pool of 1,024 connections: httpcore's pool re-examines every connection (and, for each
# idle one, every connection again) each time a request starts or a response closes, and every queued
# request against every connection. With ~1,000 triggers on a triggerer loop that made the pool
# quadratic: profiled at 1,000 triggers it took about 70 % of the process's CPU, and completion
# detection lagged ~25 s behind fal. So:
#
# * short calls (status, result, cancel, submit...) go to one of ``shards`` small pools, and a loop-wide
#   semaphore admits no more calls than there are connections, so httpcore's own queue stays empty and
#   each pool operation looks at a handful of connections;
# * a call marked :data:`LONG_LIVED` (status and output SSE streams, which hold their connection for
#   the whole wait) gets a connection of its own, closed with the response: pooling it buys nothing
#   and would make every other pool operation scan it.
#
# One SSL context is shared by all pools, so a per-stream connection does not rebuild it.
# ---------------------------------------------------------------------------

#: Request extension that routes a call to a dedicated connection (see module docstring).
LONG_LIVED = "fal_long_lived"
#: 16 pools x 8 connections: up to 128 short calls in flight per loop, each pool scan stays tiny.
SHARDS = 16
PER_SHARD = 8
#: Idle kept-alive connections are closed after this many seconds (pools and lanes alike).
KEEPALIVE_EXPIRY = 30.0
#: Long-lived streams being opened (connect and answer headers) at once per loop.
MAX_CONNECTING_STREAMS = 32
_DEFAULT_PORTS = {"http": 80, "https": 443}


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


async def _admit(slots: asyncio.Semaphore, pool_timeout: float | None) -> None:
    """Wait for a free connection no longer than the pool timeout, like httpcore would.

    ``asyncio.timeout`` where there is one (3.11+): ``wait_for`` wraps the wait in a task of its
    own, and when 10,000 waiters queue at a full pool those tasks filled whole loop iterations.
    """
    if not slots.locked() or pool_timeout is None:
        await slots.acquire()
        return
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(pool_timeout):
                await slots.acquire()
        else:  # pragma: no cover - Python 3.10
            await asyncio.wait_for(slots.acquire(), timeout=pool_timeout)
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
        self._connecting: asyncio.Semaphore | None = None
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
        await _admit(admission, (request.extensions.get("timeout") or {}).get("pool"))
        # Admission guarantees a shard below PER_SHARD in flight.
        shard = min(self._shards, key=lambda s: s.in_flight)
        shard.in_flight += 1
        on_close: list[httpx.AsyncBaseTransport | asyncio.Semaphore | _Shard] = [admission, shard]
        return await self._send(shard.transport, request, on_close)

    async def _dedicated(self, request: httpx.Request) -> httpx.Response:
        # Thousands of status streams opening at once (a fan-out, a triggerer restart) would each
        # connect in the same loop iteration and stall it; a few connect at a time, the rest wait.
        if self._connecting is None:
            self._connecting = asyncio.Semaphore(MAX_CONNECTING_STREAMS)
        transport = dedicated_transport()
        async with self._connecting:
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


# ---------------------------------------------------------------------------
# Wire lanes: the short GETs the hook repeats (status polls, results), without httpx's overhead
# A lean HTTP/1.1 lane for the short GETs the hook repeats all day (status polls, results).
#
# Why they exist: a status GET through ``httpx.AsyncClient`` costs ~1.4 ms of CPU (URL re-parsing,
# auth/redirect/cookie machinery, anyio wrappers, httpcore's pool scans), about ten times the wire
# work (one request/response on a kept-alive socket: ~0.2 ms). With 1,000 deferred tasks on one
# triggerer loop that difference is most of a core; in a worker it is what made a round trip cost
# more than fal's own client. A lane writes the same request bytes httpx would, parses the answer
# with ``httptools`` (llhttp, the parser uvicorn uses: a third of what ``h11``'s pure-Python state
# machine cost here), and returns an ordinary ``httpx.Response``, so everything around it (key-origin
# check, retry policies, ``Retry-After``, error mapping, decoding) is the code every other call runs.
#
# * :class:`WireLane`: one per event loop, over an ``asyncio.Protocol`` (triggers, async hooks);
# * :class:`BlockingLane`: one per hook's sync client, over blocking sockets (worker tasks).
#
# A lane only takes what it can send exactly as httpx would, and answers ``None`` for anything else
# (the caller then uses httpx): GETs without a body, ``http``/``https`` URLs with no query, user info
# or unusual characters, plain query parameters, no proxy configured in the environment, and any
# answer that is a redirect (httpx follows it, with its rules for dropping ``Authorization``).
# Transport failures raise the httpx exception httpcore would raise (``ConnectError``,
# ``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``RemoteProtocolError``, ``PoolTimeout``), so
# retry decisions do not depend on the lane.
#
# Connections are kept alive per origin (LIFO; idle ones dropped after :data:`KEEPALIVE_EXPIRY` s, as
# the pools' are, or as soon as the server closes them). A kept-alive connection the server closed
# while the request was being written, or before any byte of an answer arrived, is retried once on a
# new connection (safe: a lane only sends GETs).
# ---------------------------------------------------------------------------

#: Short calls in flight at once per loop (the admission bound of the httpx pools it replaces).
WIRE_MAX_CONNECTIONS = 128
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~/!$&'()*+,;=:@%]*\Z")
_PLAIN_PARAM = re.compile(r"[A-Za-z0-9\-._~]*\Z")
#: RFC 9110 header names (tokens) and values (visible ASCII, spaces and tabs inside).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?\Z")

#: ``(scheme, host, port, host header, path)`` of a URL the lane can send to.
Target = tuple[str, str, int, str, str]
#: ``(scheme, host, port)``, normalised: lower case, default port filled in (``ws``/``wss`` as
#: ``http``/``https`` where a WebSocket's origin is meant).
Origin = tuple[str, str, int]


@lru_cache(maxsize=16384)
def parsed_url(url: str) -> httpx.URL | None:
    """``url`` parsed as httpx parses it (``None``: not a URL), once for every check made of it.

    A status URL is checked for its origin (may it carry the key?), for the queue origin (is the
    reference's URL trusted?) and by the lane (can it send it?): one parse, ~50 us, serves all three."""
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None


@lru_cache(maxsize=16384)
def plain_target(url: str) -> Target | None:
    """Where ``url`` goes, parsed the way httpx parses it, or ``None`` if the lane should not send it.

    Cached: a waiting request's status URL is the same on every poll.
    """
    parsed = parsed_url(url)
    if parsed is None:
        return None
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS or parsed.userinfo or parsed.query or parsed.fragment:
        return None
    path = parsed.raw_path.decode("ascii")
    host = parsed.raw_host.decode("ascii").lower()
    if not host or not _PLAIN_PATH.match(path):
        return None
    port = parsed.port or _DEFAULT_PORTS[scheme]
    return scheme, host, port, parsed.netloc.decode("ascii"), path


def _query(params: Mapping[str, str]) -> str | None:
    """``?a=1&b=2`` as httpx encodes plain parameters; ``None`` when one needs real encoding."""
    if not params:
        return ""
    parts = []
    for name, value in params.items():
        if not (isinstance(value, str) and _PLAIN_PARAM.match(name) and _PLAIN_PARAM.match(value)):
            return None
        parts.append(f"{name}={value}")
    return "?" + "&".join(parts)


def proxies_configured() -> bool:
    """An environment proxy (``HTTPS_PROXY``...) means httpx routes through it; the lane steps aside."""
    return bool(urllib.request.getproxies())


def request_bytes(path: str, netloc: str, headers: Mapping[str, str]) -> bytes | None:
    """``GET path`` with ``Host`` and ``headers`` as HTTP/1.1 bytes, in httpx's order; ``None`` when a
    header is not plain token / visible ASCII (checked already by the caller; httpx then says why)."""
    block = _header_block(tuple(headers.items()))
    if block is None:
        return None
    return f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\n{block}\r\n".encode("ascii")


@lru_cache(maxsize=256)
def _header_block(items: tuple[tuple[str, str], ...]) -> str | None:
    """The header lines of a request, each ending in CRLF, or ``None`` if one cannot go on the lane.

    Cached: every poll of every waiter on a connection sends the same few headers."""
    lines = []
    for name, value in items:
        if not (_TOKEN.match(name) and _FIELD_VALUE.match(value)):
            return None
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def lane_request(
    url: str, params: Mapping[str, str], headers: Mapping[str, str]
) -> tuple[Origin, bytes, str] | None:
    """``(origin, request bytes, query)`` of ``GET url?params`` for a lane, or ``None``: use httpx."""
    target = plain_target(url)
    query = _query(params) if target is not None else None
    if target is None or query is None:
        return None
    scheme, host, port, netloc, path = target
    request = request_bytes(path + query, netloc, headers)
    if request is None:
        return None
    return (scheme, host, port), request, query


def as_response(answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> httpx.Response | None:
    """A whole answer as httpx's response; ``None`` for a redirect (httpx follows it, with its rules
    for the key)."""
    status, raw_headers, body = answer
    if 300 <= status < 400:
        return None
    return httpx.Response(status, headers=raw_headers, content=body)


class _Answer:
    """The answer being parsed on one connection (``httptools``' callbacks are its methods)."""

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.framed = False
        self.keep_alive = False
        self.idle_since = 0.0

    def expect_answer(self) -> None:
        """Forget the last answer; the next bytes start a new one."""
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self.chunks = 0, [], []
        self.head_done = self.complete = self.framed = self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is done
        self.complete = True

    def answer(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return self.status, self.headers, b"".join(self.chunks)


class _Connection(_Answer, asyncio.Protocol):
    """One kept-alive socket of a :class:`WireLane`; wakes the request waiting on it when bytes arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False

    def send(self, request: bytes) -> None:
        """Write a request and get ready to read its answer."""
        assert self.transport is not None
        self.expect_answer()
        self.error = None
        self.transport.write(request)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.eof:
            return
        if self.parser is None or self.complete:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(str(exc) or type(exc).__name__)
        self._wake()

    # -- the socket's end
    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._end()

    def _end(self) -> None:
        if not self.eof:
            self.eof = True
            if self.head_done and not self.framed:
                self.complete = True  # an answer without a length ends with the connection
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expire(self, message: str) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx.ReadTimeout(message))

    def reusable(self) -> bool:
        return not self.lost and self.complete and self.keep_alive

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    async def until(self, ready: Callable[[], bool], loop: asyncio.AbstractEventLoop) -> None:
        """Wait for bytes until ``ready()``; raises the parse error, or ``_Incomplete`` /
        ``RemoteProtocolError`` when the connection ends first (before / after the answer's head)."""
        while not ready():
            if self.error is not None:
                raise self.error
            if self.eof:
                if not self.head_done:
                    raise _Incomplete()
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            self.waiter = loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class _Incomplete(Exception):
    """The connection ended before any answer: retried once on a fresh one if it was reused."""


class LaneBody(httpx.AsyncByteStream):
    """The body of a streamed lane answer, read as it arrives; its connection closes with it.

    :meth:`next_chunk` lets a reader that owns the answer (the status-stream reader in ``_sse``)
    take bytes without the chain of async generators httpx's ``aiter_*`` stack up: each one left
    suspended when a stream ends early is closed later by a task of its own."""

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout

    async def next_chunk(self) -> bytes:
        """The bytes that arrived since the last call (waiting for some), ``b""`` at the body's end."""
        conn = self._conn
        if not conn.chunks and not conn.complete:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self._read_timeout or 1e9, conn.expire, "Timed out reading the answer")
            try:
                await conn.until(lambda: bool(conn.chunks) or conn.complete, loop)
            finally:
                timer.cancel()
        chunks, conn.chunks = conn.chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        while chunk := await self.next_chunk():
            yield chunk

    async def aclose(self) -> None:
        self._conn.close()


class WireLane:
    """Kept-alive HTTP/1.1 connections for one event loop (see the section comment)."""

    def __init__(
        self, ssl_context: Callable[[], ssl.SSLContext], max_connections: int = WIRE_MAX_CONNECTIONS
    ) -> None:
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._max = max_connections
        self._connecting: asyncio.Semaphore | None = None
        self.closed = False

    async def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response | None:
        """The answer to ``GET url``, or ``None``: not a call for this lane, use httpx."""
        plain = None if self.closed else lane_request(url, params, headers)
        if plain is None:
            return None
        origin, request, _ = plain
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        await _admit(self._slots, timeout.pool)
        try:
            answer = await self._exchange(origin, request, timeout)
        finally:
            assert self._slots is not None
            self._slots.release()
        return as_response(answer)

    async def stream(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response | None:
        """``GET url`` answered as soon as its headers arrive, the body still streaming, or ``None``.

        For status streams that hold their connection for the whole wait: a connection of its own
        (closed with the body), a few opened at a time per loop (``MAX_CONNECTING_STREAMS``) so a
        fan-out or a triggerer restart does not connect thousands in one loop iteration. Costs a
        fraction of httpx's stream path (pool, anyio cancel scopes per read).
        """
        plain = None if self.closed else lane_request(url, params, headers)
        if plain is None:
            return None
        origin, request, query = plain
        if self._connecting is None:
            self._connecting = asyncio.Semaphore(MAX_CONNECTING_STREAMS)
        async with self._connecting:
            conn = await self._connect(origin, timeout.connect)
            try:
                status, raw_headers = await self._head(conn, request, timeout.read)
            except BaseException:
                conn.close()
                raise
        if 300 <= status < 400:
            conn.close()
            return None  # httpx follows it, with its rules for the key
        return httpx.Response(
            status,
            headers=raw_headers,
            stream=LaneBody(conn, timeout.read),
            request=httpx.Request("GET", url + query, headers=headers),
        )

    @staticmethod
    async def _head(
        conn: _Connection, request: bytes, read_timeout: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        conn.send(request)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(read_timeout or 1e9, conn.expire, "Timed out reading the answer")
        try:
            await conn.until(lambda: conn.head_done, loop)
        except (_Incomplete, httpx.RemoteProtocolError):
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
        finally:
            timer.cancel()
        return conn.status, conn.headers

    async def _exchange(
        self, origin: Origin, request: bytes, timeout: httpx.Timeout
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        conn = self._idle_connection(origin)
        if conn is not None:
            try:
                return await self._roundtrip(origin, conn, request, timeout)
            except _Incomplete:
                pass  # closed by the server while idle: once more on a new connection
        conn = await self._connect(origin, timeout.connect)
        try:
            return await self._roundtrip(origin, conn, request, timeout)
        except _Incomplete:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < KEEPALIVE_EXPIRY:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = (
            {"ssl": self._ssl_context(), "server_hostname": host} if scheme == "https" else {}
        )
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, host, port, **tls), timeout=connect_timeout
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise httpx.ConnectTimeout(f"Connecting to {host}:{port} timed out") from None
        except OSError as exc:  # includes ssl.SSLError
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    async def _roundtrip(
        self, origin: Origin, conn: _Connection, request: bytes, timeout: httpx.Timeout
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        conn.send(request)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout.read or 1e9, conn.expire, "Timed out reading the answer")
        done = False
        try:
            await conn.until(lambda: conn.complete, loop)
            done = True
        finally:
            timer.cancel()
            if not done:
                conn.close()
        answer = conn.answer()
        if conn.reusable():
            conn.idle_since = loop.time()
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn.close()
        return answer

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _SocketConnection(_Answer):
    """One kept-alive blocking socket of a :class:`BlockingLane`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def close(self) -> None:
        self.sock.close()


class BlockingLane:
    """Kept-alive HTTP/1.1 connections over blocking sockets, for one sync ``httpx.Client``.

    A worker's hook waits on a request with status GETs and fetches its result with one more:
    through ``httpx.Client`` each costs more CPU than the wire work, and more than fal's own client
    spends on the same round trip. Safe across threads: a connection is used by one call at a time.
    """

    def __init__(self, ssl_context: Callable[[], ssl.SSLContext], max_idle: int = 16) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._idle: dict[Origin, list[_SocketConnection]] = {}
        self._lock = threading.Lock()
        self.closed = False

    def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response | None:
        """The answer to ``GET url``, or ``None``: not a call for this lane, use httpx."""
        plain = None if self.closed else lane_request(url, params, headers)
        if plain is None:
            return None
        origin, request, _ = plain
        conn = self._idle_connection(origin)
        if conn is not None:
            try:
                return as_response(self._roundtrip(origin, conn, request, timeout))
            except _Incomplete:
                pass  # closed by the server while idle: once more on a new connection
        conn = self._connect(origin, timeout.connect)
        try:
            return as_response(self._roundtrip(origin, conn, request, timeout))
        except _Incomplete:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None

    def _idle_connection(self, origin: Origin) -> _SocketConnection | None:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(origin) or []
            while idle:
                conn = idle.pop()
                if now - conn.idle_since < KEEPALIVE_EXPIRY:
                    return conn
                conn.close()
        return None

    def _connect(self, origin: Origin, connect_timeout: float | None) -> _SocketConnection:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"Connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._ssl_context().wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"TLS handshake with {host}:{port} timed out") from None
        except OSError as exc:  # includes ssl.SSLError
            sock.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return _SocketConnection(sock)

    def _roundtrip(
        self, origin: Origin, conn: _SocketConnection, request: bytes, timeout: httpx.Timeout
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        done = False
        try:
            self._write(conn, request, timeout.write)
            self._read(conn, timeout.read)
            done = True
        finally:
            if not done:
                conn.close()
        answer = conn.answer()
        if conn.keep_alive:
            conn.idle_since = time.monotonic()
            with self._lock:
                idle = self._idle.setdefault(origin, [])
                if len(idle) < self._max_idle and not self.closed:
                    idle.append(conn)
                    return answer
        conn.close()
        return answer

    @staticmethod
    def _write(conn: _SocketConnection, request: bytes, write_timeout: float | None) -> None:
        conn.expect_answer()
        conn.sock.settimeout(write_timeout)
        try:
            conn.sock.sendall(request)
        except TimeoutError:
            raise httpx.WriteTimeout("Timed out writing the request") from None
        except OSError:
            raise _Incomplete() from None  # the server had closed the connection

    @staticmethod
    def _read(conn: _SocketConnection, read_timeout: float | None) -> None:
        """Read until the answer is complete; ``_Incomplete`` if the connection ends before any of it."""
        conn.sock.settimeout(read_timeout)
        assert conn.parser is not None
        while not conn.complete:
            try:
                data = conn.sock.recv(65536)
            except TimeoutError:
                raise httpx.ReadTimeout("Timed out reading the answer") from None
            except OSError as exc:
                if not conn.head_done and not conn.chunks:
                    raise _Incomplete() from None
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            if not data:
                if not conn.head_done:
                    raise _Incomplete()
                if conn.framed:
                    raise httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                conn.keep_alive = False  # an answer without a length ends with the connection
                return
            try:
                conn.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for idle in self._idle.values():
                for conn in idle:
                    conn.close()
            self._idle.clear()


# ---------------------------------------------------------------------------
# Retries: which answers are retried, how long to wait, Retry-After
# When an HTTP call to fal may be repeated, and how long to wait before repeating it.
#
# Two policies exist because two kinds of call exist:
#
# * Idempotent calls (status, result, cancel, realtime tokens, uploads) can be sent again without
#   harm, so they retry on any transport error, 408, 429 and gateway/ingress 502/503/504.
# * Calls that start paid work (the queue submit POST, a sync ``run`` or ``/stream`` POST) retry only
#   where fal cannot have accepted the request: the connection was never established, a 429, or an
#   ingress 503 (no ``x-fal-request-id``: the gateway never saw it). A read timeout or a 500 after the
#   body was sent may mean fal queued the request; sending it again would run, and bill, it twice.
#   Airflow-level reattachment (the task stores the request id) handles those cases instead.
# ---------------------------------------------------------------------------

#: Status codes a gateway in front of fal answers without the request reaching fal.
INGRESS_CODES = frozenset({502, 503, 504})
#: How the retry loops wait (module-level, so one place decides how a retry sleeps).
sleep: Callable[[float], None] = time.sleep


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class RetryableResponse(Exception):
    """Internal signal: an HTTP answer that the policy says to try again."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = parse_retry_after(response.headers)


def is_ingress_error(response: httpx.Response) -> bool:
    """A 502/503/504 that did not come from fal's gateway (it always tags its answers)."""
    headers = response.headers
    return (
        response.status_code in INGRESS_CODES
        and "x-fal-request-id" not in headers
        and "x-fal-error-type" not in headers
    )


def _user_timeout(response: httpx.Response) -> bool:
    return response.status_code == 504 and bool(response.headers.get("x-fal-request-timeout-type"))


def _idempotent_response(response: httpx.Response) -> bool:
    if _user_timeout(response):
        return False
    return response.status_code in (408, 429) or is_ingress_error(response)


def _idempotent_exception(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError)


def _submit_response(response: httpx.Response) -> bool:
    return response.status_code == 429 or (response.status_code == 503 and is_ingress_error(response))


def _submit_exception(exc: BaseException) -> bool:
    # Only failures before a single byte reached fal: no TCP/TLS connection, or no free pool slot.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


@dataclass(frozen=True)
class RetryPolicy:
    name: str
    retry_response: Callable[[httpx.Response], bool]
    retry_exception: Callable[[BaseException], bool]

    def should_retry(self, exc: BaseException | None) -> bool:
        if isinstance(exc, RetryableResponse):
            return True
        return exc is not None and self.retry_exception(exc)


IDEMPOTENT = RetryPolicy("idempotent", _idempotent_response, _idempotent_exception)
SUBMIT = RetryPolicy("submit", _submit_response, _submit_exception)
NO_RETRY = RetryPolicy("none", lambda _response: False, lambda _exc: False)


def describe(exc: BaseException | None) -> str:
    if isinstance(exc, RetryableResponse):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


class Retries:
    """The attempts of one call: after each failure, give up (``None``) or the seconds to wait.

    Exponential backoff with jitter from ``min_wait``; a server's ``Retry-After`` wins (both capped
    at ``max_wait``); at most ``limit`` attempts. A plain counter rather than a retry library: a
    status poll is the hot path of a triggerer, and building a retry controller per call cost more
    CPU (~0.1 ms) than the rest of the call's own bookkeeping.
    """

    __slots__ = ("attempt", "label", "limit", "log", "max_wait", "min_wait", "policy")

    def __init__(
        self, policy: RetryPolicy, *, limit: int, min_wait: float, max_wait: float, log: Any, label: str
    ) -> None:
        self.policy = policy
        self.limit = limit
        self.min_wait = min_wait
        self.max_wait = max_wait
        self.log = log
        self.label = label
        self.attempt = 1

    def wait(self, exc: BaseException) -> float:
        if isinstance(exc, RetryableResponse) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        base = self.min_wait * (2 ** (self.attempt - 1))
        return min(self.max_wait, base * random.uniform(0.5, 1.5))

    def after_failure(self, exc: BaseException) -> float | None:
        """``exc`` ended this attempt: the wait before the next one, or ``None`` to re-raise it."""
        if self.attempt >= max(1, self.limit) or not self.policy.should_retry(exc):
            return None
        wait = self.wait(exc)
        self.log.warning(
            "fal %s failed (%s); attempt %d of %d, retrying in %.2f s",
            self.label,
            describe(exc),
            self.attempt,
            self.limit,
            wait,
        )
        self.attempt += 1
        return wait


# ---------------------------------------------------------------------------
# Bounded reads: a response body never larger than the caller allows
# Reading an answer body with a size limit, so an oversized result is refused before it is in memory.
#
# A result bound for XCom has a size limit the caller knows. Reading the whole body first and
# measuring it afterwards would hold (and JSON-decode) a payload of any size on the worker; instead
# ``Content-Length`` is checked before the first byte is read, and the bytes read so far while it
# streams in (a chunked or compressed answer has no usable length).
# ---------------------------------------------------------------------------


#: Headers that describe the wire encoding, dropped from the rebuilt (already decoded) answer.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _declared_size(response: httpx.Response) -> int | None:
    """``Content-Length`` when it counts the bytes the body decodes to (no content encoding)."""
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _check_declared(response: httpx.Response, limit: int, label: str) -> None:
    size = _declared_size(response)
    if size is not None and size > limit:
        raise ResponseTooLarge(label, size, limit, declared=True)


def _decoded(response: httpx.Response, body: bytes) -> httpx.Response:
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


def read_limited(response: httpx.Response, limit: int, label: str) -> httpx.Response:
    """The answer with its body read, or :class:`ResponseTooLarge` once it passes ``limit`` bytes.

    ``response`` must be a streamed (unread) answer; the caller closes it.
    """
    _check_declared(response, limit, label)
    return _decoded(response, _gather(response.iter_bytes(), limit, label))


async def aread_limited(response: httpx.Response, limit: int, label: str) -> httpx.Response:
    """Async twin of :func:`read_limited`."""
    _check_declared(response, limit, label)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise ResponseTooLarge(label, len(body), limit, declared=False)
    return _decoded(response, bytes(body))


def _gather(chunks: Iterator[bytes], limit: int, label: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ResponseTooLarge(label, len(body), limit, declared=False)
    return bytes(body)


# ---------------------------------------------------------------------------
# Transport: clients, the key guard, send/asend
# ---------------------------------------------------------------------------

DEFAULT_RETRY_LIMIT = 5
DEFAULT_RETRY_MIN_WAIT = 0.5
DEFAULT_RETRY_MAX_WAIT = 30.0

#: A WebSocket goes to the same server as the HTTP URL it was derived from.
_HTTP_SCHEME_OF = {"ws": "http", "wss": "https"}


@lru_cache(maxsize=16384)
def origin_of(url: str | httpx.URL) -> Origin | None:
    """The origin a request to ``url`` would connect to, parsed as httpx parses it; ``None`` when
    ``url`` is not an absolute http(s)/ws(s) URL (such a URL never gets the key).

    Cached: every poll of a waiting request checks the same status URL (parsing costs ~0.1 ms)."""
    parsed = url if isinstance(url, httpx.URL) else parsed_url(url) if isinstance(url, str) else None
    if parsed is None:
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


#: A worker's hook makes a handful of calls at a time.
SYNC_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30.0)

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


class LaneClient(httpx.Client):
    """A hook's sync client: httpx for everything, and the blocking lane for the plain GETs it
    takes (see "Wire lanes"); closing the client closes both."""

    def __init__(self) -> None:
        super().__init__(limits=SYNC_LIMITS, follow_redirects=True)
        # Never when the environment names a proxy: httpx routes through it, the lane does not.
        self.lane = None if proxies_configured() else BlockingLane(shared_ssl_context)

    def close(self) -> None:
        if self.lane is not None:
            self.lane.close()
        super().close()

    def __exit__(self, *exc_info: Any) -> None:
        if self.lane is not None:
            self.lane.close()
        super().__exit__(*exc_info)


def new_sync_client() -> httpx.Client:
    return LaneClient()


def shared_async_client() -> httpx.AsyncClient:
    """The running loop's shared client, created on first use (and again if someone closed it)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None or client.is_closed:
        _forget_closed_loops()
        client = httpx.AsyncClient(transport=ShardedTransport(), follow_redirects=True)
        # The lean lane for short GETs (see "Wire lane" above); only on clients made here, and never when
        # the environment names a proxy (httpx routes through it; the lane does not).
        client._fal_wire = None if proxies_configured() else WireLane(shared_ssl_context)  # type: ignore[attr-defined]
        _async_clients[loop] = client
    return client


def _wire_of(client: httpx.AsyncClient) -> WireLane | None:
    return getattr(client, "_fal_wire", None)


def _forget_closed_loops() -> None:
    """Drop clients of loops that are gone: their open connections keep the loop (the weak key) alive."""
    for old_loop in [lp for lp in list(_async_clients.keys()) if lp.is_closed()]:
        _async_clients.pop(old_loop, None)


async def close_shared_async_client() -> None:
    """Close the running loop's shared client (a task's own loop ending, or a triggerer shutting a loop down)."""
    client = _async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        lane = _wire_of(client)
        if lane is not None:
            await lane.aclose()
        await client.aclose()


def default_timeout(settings: FalSettings, read: float | None = None) -> httpx.Timeout:
    total = settings.timeout if read is None else read
    return httpx.Timeout(total, connect=min(30.0, total), pool=max(total, 60.0))


def redact_url(url: str) -> str:
    """Drop the query: realtime URLs carry a token there."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def keep_response(response: httpx.Response) -> httpx.Response:
    """The ``decode`` of calls whose answer is streamed or read by the caller."""
    return response


@dataclass(frozen=True)
class Call:
    """One HTTP call, described once and sent by either the sync or the async client."""

    method: str
    url: str
    label: str
    policy: RetryPolicy
    #: Never the key (see :func:`request_headers`); may hold other secrets (a CDN token, a user's
    #: proxy token), so kept out of repr: tracebacks that print locals do not show them.
    headers: Mapping[str, str] = field(repr=False)
    timeout: httpx.Timeout
    params: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    #: Error statuses that are answers for this call (cancel: 400/404), returned instead of raised.
    accept: frozenset[int] = frozenset()
    #: Turns the (checked) answer into what the hook method returns; both twins apply it.
    decode: Callable[[httpx.Response], Any] = field(default=keep_response, repr=False)
    #: Send ``Authorization: Key ...`` (only ever to a configured origin; see :func:`request_headers`).
    with_key: bool = True
    #: Send the connection's ADMIN-scoped key instead, and only to the Platform API origin.
    admin: bool = False

    def __post_init__(self) -> None:
        _check_headers_once(self.headers, self.label)

    def build(
        self,
        client: httpx.Client | httpx.AsyncClient,
        headers: Mapping[str, str],
        *,
        long_lived: bool = False,
    ) -> httpx.Request:
        """``headers``: from :func:`request_headers`. ``long_lived``: a streamed answer that holds its
        connection for a whole wait (see the pools section)."""
        return client.build_request(
            self.method,
            parsed_url(self.url) or self.url,  # httpx would parse the string again on every call
            params=dict(self.params) or None,
            content=self.content,
            headers=dict(headers),
            timeout=self.timeout,
            extensions={LONG_LIVED: True} if long_lived else None,
        )


#: Header sets already found valid: a waiting request's status call carries the same few headers
#: on every poll, and checking each character of each value every time was ~15 % of a poll's CPU.
_VALID_HEADER_SETS: dict[tuple[tuple[str, str], ...], None] = {}
_MAX_VALID_HEADER_SETS = 1024


def _check_headers_once(headers: Mapping[str, str], label: str) -> None:
    """:func:`check_headers`, skipped for a set of plain ``str`` headers already found valid."""
    if not headers:
        return
    items = tuple(headers.items())
    plain = all(type(name) is str and type(value) is str for name, value in items)
    if plain and items in _VALID_HEADER_SETS:
        return
    check_headers(headers, label)  # raises for an invalid one: never remembered
    if plain:
        if len(_VALID_HEADER_SETS) >= _MAX_VALID_HEADER_SETS:
            _VALID_HEADER_SETS.clear()
        _VALID_HEADER_SETS[items] = None


def request_headers(call: Call, settings: FalSettings | None) -> dict[str, str]:
    """The call's headers, plus the key if the call wants it and its URL is on a configured origin.

    A keyed call to any other origin is refused (a permanent error, before anything is sent): the
    key goes only to the hosts the connection names, whatever URL a reference or answer carried.
    ``settings`` is ``None`` only for keyless calls made without a connection (media downloads).
    """
    if not call.with_key:
        return dict(call.headers)
    if settings is None:
        raise FalInputError(f"{call.label}: a call that carries the key needs the connection's settings")
    origin = origin_of(call.url)
    if call.admin:
        return _admin_headers(call, settings, origin)
    if origin is None or origin not in settings.key_origins:
        allowed = ", ".join(sorted(show_origin(o) for o in settings.key_origins))
        raise FalInputError(
            f"{call.label}: refusing to send the fal API key to {show_origin(origin)}, which is not "
            f"one of connection {settings.conn_id!r}'s fal origins ({allowed}). Configure the host "
            "(connection host, or extras run_url / rest_url / cdn_url / platform_url) if it really is fal."
        )
    # The key replaces any Authorization a caller put in the headers.
    headers = {name: value for name, value in call.headers.items() if name.lower() != "authorization"}
    headers["Authorization"] = f"Key {settings.key}"
    return headers


def _admin_headers(call: Call, settings: FalSettings, origin: Any) -> dict[str, str]:
    """The admin key goes to the Platform API origin and nowhere else (not even the queue)."""
    if not settings.admin_key:
        raise FalMissingCredentialsError(
            f"{call.label} needs an ADMIN-scoped fal key: set the 'Admin key' field (extra "
            f"'admin_api_key') of connection {settings.conn_id!r}; fal's dashboard creates admin keys."
        )
    if origin is None or origin != settings.platform_origin:
        raise FalInputError(
            f"{call.label}: refusing to send the fal admin key to {show_origin(origin)}; connection "
            f"{settings.conn_id!r} sends it only to its Platform API {show_origin(settings.platform_origin)}."
        )
    headers = {name: value for name, value in call.headers.items() if name.lower() != "authorization"}
    headers["Authorization"] = f"Key {settings.admin_key}"
    return headers


def transport_error(call: Call, exc: httpx.TransportError) -> FalError:
    where = f"{call.label} ({call.method} {redact_url(call.url)})"
    if isinstance(exc, httpx.TimeoutException):
        return FalTimeoutError(f"{where} timed out: {type(exc).__name__}")
    return FalConnectionError(f"{where} failed: {type(exc).__name__}: {exc}")


def check_response(call: Call, response: httpx.Response) -> httpx.Response:
    """Return a usable answer or raise the typed error fal's answer maps to (body already read)."""
    if _is_answer(call, response):
        return response
    raise error_from_response(response.status_code, response.headers, response.content, context=call.label)


def _retry_options(call: Call, settings: FalSettings | None, log: Any) -> dict[str, Any]:
    if settings is None:
        limits = (DEFAULT_RETRY_LIMIT, DEFAULT_RETRY_MIN_WAIT, DEFAULT_RETRY_MAX_WAIT)
    else:
        limits = (settings.retry_limit, settings.retry_min_wait, settings.retry_max_wait)
    return {"limit": limits[0], "min_wait": limits[1], "max_wait": limits[2], "log": log, "label": call.label}


def _is_answer(call: Call, response: httpx.Response) -> bool:
    """A response the caller reads (maybe streamed); any other was read and closed before raising."""
    return response.is_success or response.status_code in call.accept


def send(
    client: httpx.Client, call: Call, settings: FalSettings | None, log: Any, *, stream: bool = False
) -> httpx.Response:
    """Send with the call's retry policy; a streamed answer is returned open (caller closes it)."""
    headers = request_headers(call, settings)
    lane = _sync_lane_for(client, call, stream)
    retries = Retries(call.policy, **_retry_options(call, settings, log))
    try:
        while True:
            try:
                response = None if lane is None else lane.get(call.url, call.params, headers, call.timeout)
                if response is None:
                    response = client.send(call.build(client, headers), stream=stream)
                if call.policy.retry_response(response):
                    response.read()
                    response.close()
                    raise RetryableResponse(response)
                break
            except Exception as exc:
                wait = retries.after_failure(exc)
                if wait is None:
                    raise
                sleep(wait)
    except RetryableResponse as exc:
        response = exc.response
    except httpx.TransportError as exc:
        raise transport_error(call, exc) from exc
    if not _is_answer(call, response):
        response.read()
        response.close()
    return check_response(call, response)


def _sync_lane_for(client: httpx.Client, call: Call, stream: bool) -> BlockingLane | None:
    """The blocking lane, for a whole-body GET on a hook's own client (a streamed answer is read
    as it arrives, which only httpx does here)."""
    if stream or call.method != "GET" or call.content is not None or not isinstance(client, LaneClient):
        return None
    return client.lane


async def _asend_once(
    client: httpx.AsyncClient, lane: WireLane | None, call: Call, headers: dict[str, str], stream: bool
) -> httpx.Response:
    """One attempt: the lean lane when it takes the call, else httpx; a retryable answer raises."""
    if lane is None:
        response = None
    elif stream:
        response = await lane.stream(call.url, call.params, headers, call.timeout)
    else:
        response = await lane.get(call.url, call.params, headers, call.timeout)
    if response is None:
        response = await client.send(call.build(client, headers, long_lived=stream), stream=stream)
    if call.policy.retry_response(response):
        await response.aread()
        await response.aclose()
        raise RetryableResponse(response)
    return response


async def asend(
    client: httpx.AsyncClient, call: Call, settings: FalSettings, log: Any, *, stream: bool = False
) -> httpx.Response:
    """Async twin of :func:`send`."""
    headers = request_headers(call, settings)
    lane = _wire_of(client) if call.method == "GET" and call.content is None else None
    retries = Retries(call.policy, **_retry_options(call, settings, log))
    try:
        while True:
            try:
                response = await _asend_once(client, lane, call, headers, stream)
                break
            except Exception as exc:
                wait = retries.after_failure(exc)
                if wait is None:
                    raise
                await asleep(wait)
    except RetryableResponse as exc:
        response = exc.response
    except httpx.TransportError as exc:
        raise transport_error(call, exc) from exc
    if not _is_answer(call, response):
        await response.aread()
        await response.aclose()
    return check_response(call, response)
