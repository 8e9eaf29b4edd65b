"""The shared async client's transport: bounded short calls, own connection for long-lived streams."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fal_provider.hooks import _transport
from fal_provider.hooks._transport import LONG_LIVED, ShardedTransport


def _answer(body: bytes = b"{}") -> httpx.Response:
    """A streamed body like a real transport's (a preloaded one is never closed by httpx)."""
    return httpx.Response(200, stream=httpx.ByteStream(body))


def _install(transport: ShardedTransport, handler) -> None:  # type: ignore[no-untyped-def]
    for shard in transport._shards:
        shard.transport = httpx.MockTransport(handler)


async def test_short_calls_never_exceed_capacity_and_give_their_slot_back() -> None:
    transport = ShardedTransport(shards=2, per_shard=2)
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return _answer(b'{"ok": true}')

    _install(transport, handler)
    async with httpx.AsyncClient(transport=transport) as client:
        responses = await asyncio.gather(*(client.get("http://fal.test/status") for _ in range(20)))
    assert [r.json() for r in responses] == [{"ok": True}] * 20
    assert 1 < peak <= transport.capacity == 4
    assert all(shard.in_flight == 0 for shard in transport._shards)
    assert transport._admission is not None and transport._admission._value == 4


async def test_waiting_for_a_slot_honours_the_pool_timeout() -> None:
    transport = ShardedTransport(shards=1, per_shard=1)
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return _answer()

    _install(transport, handler)
    async with httpx.AsyncClient(transport=transport) as client:
        holder = asyncio.create_task(client.get("http://fal.test/a"))
        await asyncio.sleep(0.01)
        with pytest.raises(httpx.PoolTimeout):
            await client.get("http://fal.test/b", timeout=httpx.Timeout(5.0, pool=0.05))
        release.set()
        assert (await holder).status_code == 200
    assert transport._admission is not None and transport._admission._value == 1


async def test_long_lived_call_gets_its_own_transport_closed_with_the_response(monkeypatch) -> None:
    opened: list[httpx.MockTransport] = []

    class Tracked(httpx.MockTransport):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    def dedicated() -> httpx.AsyncBaseTransport:
        opened.append(Tracked(lambda request: _answer(b"data: {}\n\n")))
        return opened[-1]

    monkeypatch.setattr(_transport, "dedicated_transport", dedicated)
    transport = ShardedTransport(shards=1, per_shard=1)
    _install(transport, lambda request: pytest.fail("a long-lived call must not use a shared pool"))
    async with httpx.AsyncClient(transport=transport) as client:
        request = client.build_request("GET", "http://fal.test/stream", extensions={LONG_LIVED: True})
        response = await client.send(request, stream=True)
        assert len(opened) == 1 and not opened[0].closed
        assert await response.aread() == b"data: {}\n\n"
        await response.aclose()
    assert opened[0].closed
    assert transport._admission is None, "a long-lived call takes no short-call slot"
