"""HTTP clients and the one place where a request is sent, retried and turned into a typed error.

Clients: a hook owns one ``httpx.Client`` (a worker task runs one hook at a time). Triggers create
many hooks on one event loop, so async calls share ONE ``httpx.AsyncClient`` per loop, whatever the
connection: credentials and timeouts travel with each request, never with the client. Its transport
(:mod:`._pool`) splits the connections into small pools, because one big httpcore pool costs CPU
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
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from fal_provider.exceptions import (
    FalConnectionError,
    FalError,
    FalInputError,
    FalTimeoutError,
    error_from_response,
)
from fal_provider.headers import check_headers
from fal_provider.hooks._pool import LONG_LIVED, ShardedTransport, shared_ssl_context
from fal_provider.hooks._retry import RetryableResponse, RetryPolicy, async_retrying, sync_retrying
from fal_provider.hooks._wire import WireLane, proxies_configured
from fal_provider.hooks._settings import (
    DEFAULT_RETRY_LIMIT,
    DEFAULT_RETRY_MAX_WAIT,
    DEFAULT_RETRY_MIN_WAIT,
    FalSettings,
    origin_of,
    show_origin,
)

#: A worker's hook makes a handful of calls at a time.
SYNC_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30.0)

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def new_sync_client() -> httpx.Client:
    return httpx.Client(limits=SYNC_LIMITS, follow_redirects=True)


def shared_async_client() -> httpx.AsyncClient:
    """The running loop's shared client, created on first use (and again if someone closed it)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None or client.is_closed:
        _forget_closed_loops()
        client = httpx.AsyncClient(transport=ShardedTransport(), follow_redirects=True)
        # The lean lane for short GETs (see ``_wire``); only on clients made here, and never when
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

    def __post_init__(self) -> None:
        check_headers(self.headers, self.label)

    def build(
        self,
        client: httpx.Client | httpx.AsyncClient,
        headers: Mapping[str, str],
        *,
        long_lived: bool = False,
    ) -> httpx.Request:
        """``headers``: from :func:`request_headers`. ``long_lived``: a streamed answer that holds its
        connection for a whole wait (see ``_pool``)."""
        return client.build_request(
            self.method,
            self.url,
            params=dict(self.params) or None,
            content=self.content,
            headers=dict(headers),
            timeout=self.timeout,
            extensions={LONG_LIVED: True} if long_lived else None,
        )


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
    if origin is None or origin not in settings.key_origins:
        allowed = ", ".join(sorted(show_origin(o) for o in settings.key_origins))
        raise FalInputError(
            f"{call.label}: refusing to send the fal API key to {show_origin(origin)}, which is not "
            f"one of connection {settings.conn_id!r}'s fal origins ({allowed}). Configure the host "
            "(connection host, or extras run_url / rest_url / cdn_url) if it really is fal."
        )
    # The key replaces any Authorization a caller put in the headers.
    headers = {name: value for name, value in call.headers.items() if name.lower() != "authorization"}
    headers["Authorization"] = f"Key {settings.key}"
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
    try:
        for attempt in sync_retrying(call.policy, **_retry_options(call, settings, log)):
            with attempt:
                response = client.send(call.build(client, headers), stream=stream)
                if call.policy.retry_response(response):
                    response.read()
                    response.close()
                    raise RetryableResponse(response)
    except RetryableResponse as exc:
        response = exc.response
    except httpx.TransportError as exc:
        raise transport_error(call, exc) from exc
    if not _is_answer(call, response):
        response.read()
        response.close()
    return check_response(call, response)


async def asend(
    client: httpx.AsyncClient, call: Call, settings: FalSettings, log: Any, *, stream: bool = False
) -> httpx.Response:
    """Async twin of :func:`send`."""
    headers = request_headers(call, settings)
    lane = _wire_of(client) if not stream and call.method == "GET" and call.content is None else None
    try:
        async for attempt in async_retrying(call.policy, **_retry_options(call, settings, log)):
            with attempt:
                response = None if lane is None else await lane.get(call.url, call.params, headers, call.timeout)
                if response is None:
                    response = await client.send(call.build(client, headers, long_lived=stream), stream=stream)
                if call.policy.retry_response(response):
                    await response.aread()
                    await response.aclose()
                    raise RetryableResponse(response)
    except RetryableResponse as exc:
        response = exc.response
    except httpx.TransportError as exc:
        raise transport_error(call, exc) from exc
    if not _is_answer(call, response):
        await response.aread()
        await response.aclose()
    return check_response(call, response)
