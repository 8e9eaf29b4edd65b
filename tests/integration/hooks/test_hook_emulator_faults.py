"""Fault injection through the emulator's admin API: the hook retries what is safe, and only that."""

from __future__ import annotations

import time

import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalConnectionError, FalServerError
from fal_provider.hooks.fal import FalHook


def test_submit_429_with_retry_after_is_retried_and_submits_once(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float]
) -> None:
    fal_emulator_conn.set_faults(kind="429", count=2, endpoints=["submit"], retry_after=3)
    ref = hook.submit("emulator/echo", {"a": 1})
    assert ref.request_id
    assert waits == [3.0, 3.0]
    stats = fal_emulator_conn.stats()
    assert stats["submits_total"] == 1


def test_submit_ingress_503_is_retried(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float]
) -> None:
    fal_emulator_conn.set_faults(kind="503", count=1, endpoints=["submit"])
    hook.submit("emulator/echo", {})
    assert len(waits) == 1
    assert fal_emulator_conn.stats()["submits_total"] == 1


@pytest.mark.parametrize(("kind", "error"), [("500", FalServerError), ("drop", FalConnectionError)])
def test_submit_is_not_resent_when_fal_may_have_accepted_it(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float], kind: str, error: type
) -> None:
    fal_emulator_conn.set_faults(kind=kind, count=1, endpoints=["submit"])
    with pytest.raises(error):
        hook.submit("emulator/echo", {})
    assert waits == []
    assert sum(fal_emulator_conn.stats()["faults_injected"].values()) == 1


@pytest.mark.parametrize("kind", ["429", "502", "503", "drop", "drop_mid"])
def test_status_and_result_survive_transient_faults(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float], kind: str
) -> None:
    ref = hook.submit("emulator/echo", {"v": kind})
    fal_emulator_conn.set_faults(kind=kind, count=2, endpoints=["status", "result"], retry_after=0.1)
    for _ in range(500):
        if hook.get_status(ref).status == "COMPLETED":
            break
        time.sleep(0.02)
    assert hook.get_result(ref) == {"v": kind}
    assert len(waits) == 2


async def test_async_status_survives_faults(fal_emulator_conn: FalEmulator, waits: list[float]) -> None:
    hook = FalHook()
    ref = await hook.asubmit("emulator/echo", {})
    fal_emulator_conn.set_faults(kind="503", count=2, endpoints=["status"])
    assert (await hook.aget_status(ref)).status in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert len(waits) == 2
    await FalHook.aclose_shared_client()
