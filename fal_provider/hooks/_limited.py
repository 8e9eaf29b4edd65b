"""Reading an answer body with a size limit, so an oversized result is refused before it is in memory.

A result bound for XCom has a size limit the caller knows. Reading the whole body first and
measuring it afterwards would hold (and JSON-decode) a payload of any size on the worker; instead
``Content-Length`` is checked before the first byte is read, and the bytes read so far while it
streams in (a chunked or compressed answer has no usable length).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from fal_provider.exceptions import ResponseTooLarge

__all__ = ["ResponseTooLarge", "aread_limited", "read_limited"]

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
