"""fal accepted the call, then its answer was lost: what the hook does, and what that costs.

The emulator's ``after_accept`` fault runs the call for real (the submit is queued, the result
served, the cancel applied) and then resets the connection or answers with a gateway page.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalConnectionError, FalServerError, FalTimeoutError, FalTransientError
from fal_provider.hooks.fal import FalHook
from tests.integration.emulator.helpers import wait_for

LOST_SUBMIT = [("drop", FalConnectionError), ("502", FalServerError), ("504", FalTimeoutError)]


def lose_next(emu: FalEmulator, endpoint: str, answer: str) -> None:
    emu.set_faults(kind="after_accept", answer=answer, count=1, endpoints=[endpoint])


def the_orphan(emu: FalEmulator) -> dict[str, Any]:
    """The one request fal queued although the caller never learnt its id; waits until it ran."""
    listed = httpx.get(f"{emu.base_url}/_emulator/requests", timeout=30).json()["requests"]
    assert len(listed) == 1, listed
    request_id = listed[0]["request_id"]
    return dict(wait_for(lambda: (info := emu.request_info(request_id))["state"] == "COMPLETED" and info))


def assert_one_paid_orphan(emu: FalEmulator, arguments: dict[str, Any]) -> None:
    stats = emu.stats()
    assert stats["submits_total"] == 1, "the hook resent a POST fal had already queued"
    assert stats["faults_injected"] == {"after_accept": 1}
    orphan = the_orphan(emu)
    assert (orphan["arguments"], orphan["result_status_code"]) == (arguments, 200)


@pytest.mark.parametrize(("answer", "error"), LOST_SUBMIT)
def test_lost_submit_is_not_resent_and_a_task_retry_pays_again(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float], answer: str, error: type
) -> None:
    lose_next(fal_emulator_conn, "submit", answer)
    with pytest.raises(error) as raised:
        hook.submit("emulator/echo", {"try": 1})
    assert isinstance(raised.value, FalTransientError)  # Airflow retries the task
    assert raised.value.request_id is None  # so the provider cannot know which request to adopt
    assert waits == []
    assert_one_paid_orphan(fal_emulator_conn, {"try": 1})
    # What the task retry does: a second, separately billed request.
    hook.submit("emulator/echo", {"try": 1})
    assert fal_emulator_conn.stats()["submits_total"] == 2


@pytest.mark.parametrize(("answer", "error"), LOST_SUBMIT)
async def test_async_lost_submit_is_not_resent(
    ahook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float], answer: str, error: type
) -> None:
    lose_next(fal_emulator_conn, "submit", answer)
    with pytest.raises(error):
        await ahook.asubmit("emulator/echo", {"try": 1})
    assert waits == []
    assert_one_paid_orphan(fal_emulator_conn, {"try": 1})


@pytest.mark.parametrize("answer", ["drop", "502", "504"])
def test_lost_result_is_fetched_again(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float], answer: str
) -> None:
    ref = hook.submit("emulator/echo", {"v": answer})
    wait_for(lambda: hook.get_status(ref).status == "COMPLETED")
    lose_next(fal_emulator_conn, "result", answer)
    assert hook.get_result(ref) == {"v": answer}
    # A 502/504 is retried after a wait; a reset before any byte of the answer on the kept-alive
    # connection is resent at once on a fresh one by the wire lane (a GET: harmless).
    assert len(waits) == (0 if answer == "drop" else 1)
    assert fal_emulator_conn.stats()["result_calls"] == 2


async def test_async_lost_result_is_fetched_again(
    ahook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float]
) -> None:
    ref = await ahook.asubmit("emulator/echo", {"v": 1})
    wait_for(lambda: fal_emulator_conn.request_info(ref.request_id)["state"] == "COMPLETED")
    lose_next(fal_emulator_conn, "result", "drop")
    assert await ahook.aget_result(ref) == {"v": 1}
    assert len(waits) == 1 and fal_emulator_conn.stats()["result_calls"] == 2


@pytest.mark.parametrize("answer", ["drop", "502"])
def test_lost_cancel_is_resent_and_reads_as_already_completed(
    hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float], answer: str
) -> None:
    """The first PUT cancelled the request; the resent one finds it finished, so the hook reports
    ALREADY_COMPLETED although it was this cancel that ended it. The status says what happened."""
    ref = hook.submit("emulator/echo", {"duration_s": 30})
    lose_next(fal_emulator_conn, "cancel", answer)
    assert hook.cancel(ref) == "ALREADY_COMPLETED"
    assert len(waits) == 1 and fal_emulator_conn.stats()["cancels"] == 2
    status = hook.get_status(ref)
    assert status.status == "COMPLETED"
    assert fal_emulator_conn.request_info(ref.request_id)["error_type"] == "client_cancelled"


def test_fal_client_resends_a_lost_submit(fal_emulator: FalEmulator) -> None:
    """For comparison: fal-client retries any transport error and ingress 502/503/504 on submit,
    so the same lost answer makes it queue (and bill) the request twice."""
    import fal_client

    lose_next(fal_emulator, "submit", "drop")
    with fal_emulator.patch_fal_client():
        handle = fal_client.submit("emulator/echo", {"try": 1})
    assert handle.request_id
    assert fal_emulator.stats()["submits_total"] == 2
