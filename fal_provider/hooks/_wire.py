"""A lean HTTP/1.1 lane for the short GETs a triggerer loop repeats all day (status polls, results).

Why it exists: a status GET through ``httpx.AsyncClient`` costs ~1.4 ms of CPU (URL re-parsing,
auth/redirect/cookie machinery, anyio wrappers, httpcore's pool scans), about ten times the wire
work (one ``h11`` request/response on a kept-alive socket: ~0.2 ms). With 1,000 deferred tasks on
one triggerer loop that difference is most of a core. This lane sends the same bytes with
``asyncio.Protocol`` + ``h11`` (the HTTP/1.1 state machine httpx uses) and returns an ordinary
``httpx.Response``, so everything around it (key-origin check, retry policies, ``Retry-After``,
error mapping, decoding) is the code every other call runs.

It only takes what it can send exactly as httpx would, and answers ``None`` for anything else (the
caller then uses the shared ``httpx.AsyncClient``): GETs without a body, ``http``/``https`` URLs with
no query, user info or unusual characters, plain query parameters, no proxy configured in the
environment, and any answer that is a redirect (httpx follows it, with its rules for dropping
``Authorization``). Transport failures raise the httpx exception httpcore would raise
(``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``, ``PoolTimeout``), so
retry decisions do not depend on the lane.

Connections are kept alive per origin (LIFO, at most :data:`MAX_CONNECTIONS` busy per loop, idle
ones dropped after :data:`KEEPALIVE_EXPIRY` s or as soon as the server closes them). A kept-alive
connection the server closed while the request was being written is retried once on a new
connection, before any byte of an answer arrived (safe: the lane only sends GETs).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import h11
import httpx

#: Short calls in flight at once per loop (the admission bound of the httpx pools it replaces).
MAX_CONNECTIONS = 128
#: Seconds an idle connection is kept (servers close theirs after 5-75 s; a closed one is noticed).
KEEPALIVE_EXPIRY = 30.0
_READ_SIZE = 65536
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~/!$&'()*+,;=:@%]*\Z")
_PLAIN_PARAM = re.compile(r"[A-Za-z0-9\-._~]*\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: ``(scheme, host, port, host header, path)`` of a URL the lane can send to.
Target = tuple[str, str, int, str, str]


@lru_cache(maxsize=16384)
def plain_target(url: str) -> Target | None:
    """Where ``url`` goes, parsed the way httpx parses it, or ``None`` if the lane should not send it.

    Cached: a waiting request's status URL is the same on every poll.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
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


class _Connection(asyncio.Protocol):
    """One kept-alive socket and its h11 state; wakes the request waiting on it when bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.CLIENT)
        self.waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.eof:
            return
        self.http.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._end()

    def _end(self) -> None:
        if not self.eof:
            self.eof = True
            self.http.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expire(self, message: str) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx.ReadTimeout(message))

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _Incomplete(Exception):
    """The connection ended before any answer: retried once on a fresh one if it was reused."""


class WireLane:
    """Kept-alive h11 connections for one event loop (see module docstring)."""

    def __init__(
        self, ssl_context: Callable[[], ssl.SSLContext], max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._max = max_connections
        self.closed = False

    async def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> httpx.Response | None:
        """The answer to ``GET url``, or ``None``: not a call for this lane, use httpx."""
        target = plain_target(url)
        query = _query(params) if target is not None else None
        if target is None or query is None or self.closed:
            return None
        scheme, host, port, netloc, path = target
        wire_headers = [("Host", netloc), *headers.items()]
        request = h11.Request(method="GET", target=path + query, headers=wire_headers)
        await self._admit(timeout.pool)
        try:
            answer = await self._exchange((scheme, host, port), request, timeout)
        finally:
            assert self._slots is not None
            self._slots.release()
        status, raw_headers, body = answer
        if 300 <= status < 400:
            return None
        return httpx.Response(status, headers=raw_headers, content=body)

    async def _admit(self, pool_timeout: float | None) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=pool_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise httpx.PoolTimeout("No free connection in the shared pool within the pool timeout") from None

    async def _exchange(
        self, origin: tuple[str, str, int], request: h11.Request, timeout: httpx.Timeout
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

    def _idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
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

    async def _connect(self, origin: tuple[str, str, int], connect_timeout: float | None) -> _Connection:
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
        self, origin: tuple[str, str, int], conn: _Connection, request: h11.Request, timeout: httpx.Timeout
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        http = conn.http
        assert conn.transport is not None
        conn.transport.write(http.send(request) + http.send(h11.EndOfMessage()))
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout.read or 1e9, conn.expire, "Timed out reading the answer")
        done = False
        try:
            answer = await self._read(conn, loop)
            done = True
        finally:
            timer.cancel()
            conn.waiter = None
            if not done:
                conn.close()
        self._keep_or_close(origin, conn, loop)
        return answer

    async def _read(
        self, conn: _Connection, loop: asyncio.AbstractEventLoop
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        http = conn.http
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                if status == 0 and conn.eof:
                    raise _Incomplete() from None
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is h11.NEED_DATA:
                if conn.eof:  # h11 reports an unexpected close as an error above; be safe anyway
                    raise (
                        _Incomplete()
                        if status == 0
                        else httpx.RemoteProtocolError("Connection closed mid-answer")
                    )
                conn.waiter = loop.create_future()
                await conn.waiter
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, body
            elif isinstance(event, h11.ConnectionClosed):
                if status == 0:
                    raise _Incomplete()
                raise httpx.RemoteProtocolError("Connection closed mid-answer")

    def _keep_or_close(
        self, origin: tuple[str, str, int], conn: _Connection, loop: asyncio.AbstractEventLoop
    ) -> None:
        http = conn.http
        if conn.lost or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            conn.close()
            return
        http.start_next_cycle()
        conn.idle_since = loop.time()
        self._idle.setdefault(origin, []).append(conn)

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
