"""A result over the caller's limit is refused before it is read whole: from ``Content-Length``
before the first byte, or while the body streams in when there is no usable length.

Real ``httpx`` responses over body streams that count what was pulled from them (the emulator
tests in ``tests/integration/streaming/test_security_result_size.py`` do the same over HTTP).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.exceptions import ResponseTooLarge
from fal_provider.hooks._transport import aread_limited, read_limited

CHUNK = b"x" * 1024


class CountingBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """``chunks`` chunks of 1 KiB; ``pulled`` says how many a reader took."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield CHUNK

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def response(body: CountingBody, *, declared: int | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if declared is not None:
        headers["content-length"] = str(declared)
    return httpx.Response(
        200, headers=headers, stream=body, request=httpx.Request("GET", "http://fal.test/r")
    )


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = CountingBody(10_000)
    with pytest.raises(ResponseTooLarge) as info:
        read_limited(response(body, declared=10_000 * 1024), 64 * 1024, "result of r1")
    assert body.pulled == 0
    assert info.value.declared and info.value.size == 10_000 * 1024 and info.value.limit == 64 * 1024
    assert isinstance(info.value, AirflowFailException) and isinstance(info.value, ValueError)
    assert "result of r1" in str(info.value)


def test_body_without_a_length_stops_once_past_the_limit() -> None:
    body = CountingBody(10_000)
    with pytest.raises(ResponseTooLarge) as info:
        read_limited(response(body), 64 * 1024, "result of r1")
    assert body.pulled == 65, "one chunk past the limit, not the whole 10 MiB"
    assert not info.value.declared and info.value.size == 65 * 1024


def test_body_that_lies_about_its_length_is_still_bounded() -> None:
    body = CountingBody(10_000)
    with pytest.raises(ResponseTooLarge):
        read_limited(response(body, declared=10), 64 * 1024, "result of r1")
    assert body.pulled == 65


def test_body_under_the_limit_decodes_as_usual() -> None:
    payload = json.dumps({"images": [{"url": "https://cdn/x.png"}], "seed": 3}).encode()
    raw = httpx.Response(
        200,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        content=gzip.compress(payload),
        request=httpx.Request("GET", "http://fal.test/r"),
    )
    assert read_limited(raw, len(payload), "result").json() == {
        "images": [{"url": "https://cdn/x.png"}],
        "seed": 3,
    }


def test_compressed_body_is_measured_after_decoding() -> None:
    payload = b'{"blob": "' + b"x" * 100_000 + b'"}'
    raw = httpx.Response(
        200,
        headers={"content-encoding": "gzip"},
        content=gzip.compress(payload),  # a few hundred bytes on the wire
        request=httpx.Request("GET", "http://fal.test/r"),
    )
    with pytest.raises(ResponseTooLarge) as info:
        read_limited(raw, 10_000, "result")
    assert not info.value.declared


async def test_async_twin_refuses_the_same_way() -> None:
    declared = CountingBody(10_000)
    with pytest.raises(ResponseTooLarge):
        await aread_limited(response(declared, declared=10_000 * 1024), 64 * 1024, "result")
    assert declared.pulled == 0
    streamed = CountingBody(10_000)
    with pytest.raises(ResponseTooLarge):
        await aread_limited(response(streamed), 64 * 1024, "result")
    assert streamed.pulled == 65
    small = CountingBody(3)
    assert len((await aread_limited(response(small), 64 * 1024, "result")).content) == 3 * 1024
