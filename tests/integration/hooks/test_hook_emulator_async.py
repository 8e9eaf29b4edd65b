"""The async twins over real HTTP/WebSocket against the emulator, on one shared client per loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalServerError, FalStreamError, FalValidationError
from fal_provider.hooks import _transport
from fal_provider.hooks.fal import FalHook, FalRealtimeError
from fal_provider.models import CompletedStatus


@pytest.fixture
async def hook(fal_emulator_conn: FalEmulator) -> AsyncIterator[FalHook]:
    yield FalHook()
    await FalHook.aclose_shared_client()


async def wait_completed(hook: FalHook, ref: object, timeout: float = 30.0) -> CompletedStatus:
    async def poll() -> CompletedStatus:
        while True:
            status = await hook.aget_status(ref, logs=True)  # type: ignore[arg-type]
            if isinstance(status, CompletedStatus):
                return status
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


async def test_asubmit_aget_status_aget_result(hook: FalHook) -> None:
    ref = await hook.asubmit("emulator/echo", {"n": 1, "duration_s": 0.2}, options={"priority": "low"})
    done = await wait_completed(hook, ref)
    assert not done.failed
    assert await hook.aget_result(ref) == {"n": 1, "duration_s": 0.2}


async def test_aiter_status(hook: FalHook) -> None:
    ref = await hook.asubmit("emulator/echo", {"duration_s": 0.3})
    statuses = [s async for s in hook.aiter_status(ref, logs=True)]
    assert statuses[-1].status == "COMPLETED"


async def test_acancel_outcomes(hook: FalHook) -> None:
    ref = await hook.asubmit("emulator/echo", {"duration_s": 20})
    assert await hook.acancel(ref) == "CANCELLATION_REQUESTED"
    assert (await wait_completed(hook, ref)).error_type == "client_cancelled"
    assert await hook.acancel(ref) == "ALREADY_COMPLETED"
    assert await hook.acancel({"app_id": "emulator/echo", "request_id": "missing"}) == "NOT_FOUND"


async def test_failed_request_result_raises(hook: FalHook) -> None:
    ref = await hook.asubmit("emulator/fail", {"kind": "runner"})
    await wait_completed(hook, ref)
    with pytest.raises(FalServerError):
        await hook.aget_result(ref)


async def test_arun_and_astream(hook: FalHook) -> None:
    assert await hook.arun("emulator/echo", {"q": "a"}) == {"q": "a"}
    with pytest.raises(FalValidationError):
        await hook.arun("emulator/fail", {"kind": "validation"})
    events = [e async for e in hook.astream("emulator/stream", {"count": 2})]
    assert events[-1]["done"] is True and len(events) == 3
    with pytest.raises(FalStreamError):
        _ = [e async for e in hook.astream("emulator/stream", {"count": 4, "break_after": 1})]


async def test_arealtime(hook: FalHook) -> None:
    async with hook.arealtime("emulator/realtime") as session:
        await session.send({"hello": "world"})
        assert await session.recv(timeout=10) == {"hello": "world"}
        await session.send({"x_fal_error": "TIMEOUT"})
        with pytest.raises(FalRealtimeError):
            await session.recv(timeout=10)


async def test_aupload(hook: FalHook, tmp_path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"a": 1}')
    url = await hook.aupload(path)
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.json() == {"a": 1}


async def test_many_triggers_share_one_client(fal_emulator_conn: FalEmulator, hook: FalHook) -> None:
    refs = [await hook.asubmit("emulator/echo", {"i": i}) for i in range(5)]
    hooks = [FalHook() for _ in range(100)]
    statuses = await asyncio.gather(*(h.aget_status(refs[i % 5]) for i, h in enumerate(hooks)))
    assert len(statuses) == 100
    assert len([c for c in _transport._async_clients.values() if not c.is_closed]) == 1
    assert fal_emulator_conn.stats()["status_calls"]["total"] >= 100
