"""The status-stream reader for answers that came by the wire lane: the events httpx_sse reads, from
bytes split anywhere, and no async generator left for the loop to close."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest
from httpx_sse import EventSource

from fal_provider.hooks import _sse, _transport

STREAM = (
    b": a comment\r\n"
    b'data: {"status": "IN_QUEUE", "queue_position": 2}\r\n\r\n'
    b'event: status\nid: 7\ndata: {"status":\nretry: 10\ndata:  "IN_PROGRESS", "logs": [{"message": "caf\xc3\xa9"}]}\n\n'
    b"data\n\n"  # a field without a colon: an empty data line
    b'data: {"status": "COMPLETED"}\r\r'
    b"data: never ended"
)


class Body:
    """What the reader needs of a lane body: ``next_chunk``, ``b""`` at the end."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def next_chunk(self) -> bytes:
        await asyncio.sleep(0)
        return self.chunks.pop(0) if self.chunks else b""


def httpx_sse_data(raw: bytes) -> list[str]:
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    return [event.data for event in EventSource(response).iter_sse()]


async def lane_data(chunks: list[bytes]) -> list[str]:
    return [data async for data in _sse._lane_event_data(Body(chunks))]  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
async def test_reads_the_events_httpx_sse_reads_however_the_bytes_are_split(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    expected = httpx_sse_data(STREAM)
    assert len(expected) == 4 and "café" in expected[1]
    assert await lane_data(chunks) == expected


async def test_closing_the_reader_early_leaves_nothing_for_the_loop_to_finalize() -> None:
    finalized: list[object] = []
    old_hooks = sys.get_asyncgen_hooks()
    loop_finalizer = old_hooks.finalizer

    def finalizer(agen: object) -> None:
        finalized.append(agen)
        if loop_finalizer is not None:
            loop_finalizer(agen)  # type: ignore[arg-type]

    sys.set_asyncgen_hooks(firstiter=old_hooks.firstiter, finalizer=finalizer)
    try:
        conn = _transport._Connection()
        conn.chunks, conn.complete = [STREAM], True  # the whole answer has arrived
        body = _transport.LaneBody(conn, read_timeout=1)
        response = httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)
        statuses = [s.status async for s in _sse.aiter_status_events(response, "status stream")]
    finally:
        sys.set_asyncgen_hooks(*old_hooks)
    assert statuses == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    await asyncio.sleep(0)
    assert finalized == []
