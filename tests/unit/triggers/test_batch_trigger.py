"""FalBatchTrigger: which requests of a window finished, and the kill paths over the whole window."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest

from fal_provider.exceptions import FalNotFoundError, FalServerError
from fal_provider.models import FalRequestRef
from fal_provider.triggers.batch import FalBatchTrigger
from tests.unit.operators.fakes import done, install_hook, make_ref, queued
from tests.unit.triggers.helpers import async_hook, first_event
from tests.unit.triggers.test_kill_fallback import TaskStates, cancel_while_waiting

REFS = [make_ref(f"req-{n}") for n in range(4)]


def window(ready_count: int = 2, **kwargs: Any) -> FalBatchTrigger:
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("max_poll_interval", 0.02)
    return FalBatchTrigger(requests=[ref.to_xcom() for ref in REFS], ready_count=ready_count, **kwargs)


def answers(by_request: dict[str, list[Any]]) -> Any:
    """``aget_status`` side effect: each request's answers in order (its last one repeats)."""

    async def status(ref: FalRequestRef, **_: Any) -> Any:
        queue = by_request[ref.request_id]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return status


async def test_fires_once_enough_requests_finished_and_names_them() -> None:
    hook = async_hook()
    hook.aget_status.side_effect = answers(
        {"req-0": [queued(), done()], "req-1": [queued()], "req-2": [done()], "req-3": [queued()]}
    )
    event = await first_event(window(ready_count=2), hook)
    assert event["status"] == "success" and event["done"] == ["req-0", "req-2"]


async def test_a_request_fal_no_longer_knows_counts_as_finished() -> None:
    hook = async_hook()
    gone = FalNotFoundError("no such request")
    hook.aget_status.side_effect = answers({r.request_id: [gone] for r in REFS})
    event = await first_event(window(ready_count=4), hook)
    assert event["done"] == [r.request_id for r in REFS]


async def test_transient_errors_are_tolerated_up_to_the_limit_then_end_as_error() -> None:
    hook = async_hook()
    hook.aget_status.side_effect = answers({r.request_id: [FalServerError("503")] for r in REFS})
    event = await first_event(window(max_consecutive_errors=2), hook)
    assert event["status"] == "error" and event["error_class"] == "FalServerError"
    assert hook.aget_status.await_count == 3 * len(REFS), "two tolerated rounds, the third ends it"


def test_ready_count_is_clamped_and_the_trigger_round_trips() -> None:
    assert window(ready_count=0).ready_count == 1 and window(ready_count=99).ready_count == 4
    classpath, kwargs = window().serialize()
    assert classpath == "fal_provider.triggers.batch.FalBatchTrigger"
    assert FalBatchTrigger(**kwargs).serialize() == (classpath, kwargs)
    with pytest.raises(ValueError, match="at least one request"):
        FalBatchTrigger(requests=[])


async def test_on_kill_cancels_every_request_not_seen_finished() -> None:
    hook = async_hook()
    trig = install_hook(window(ready_count=4), hook)
    trig._done = {"req-0"}  # seen finished by an earlier poll
    await trig.on_kill()  # Airflow >= 3.3, a user's kill (no task instance: not "moved")
    cancelled = sorted(call.args[0].request_id for call in hook.acancel.await_args_list)
    assert cancelled == ["req-1", "req-2", "req-3"]
    await trig.on_kill()
    assert hook.acancel.await_count == 3, "cancelled once"


@pytest.mark.parametrize(("state", "cancels"), [("failed", 4), ("deferred", 0)])
async def test_before_3_3_a_user_kill_cancels_the_window_and_a_restart_does_not(
    state: str, cancels: int
) -> None:
    hook = async_hook()
    trig = window(ready_count=4)
    trig.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)  # type: ignore[assignment]
    with patch("fal_provider.triggers.fal.AIRFLOW_V_3_3_PLUS", False):
        await cancel_while_waiting(trig, hook, TaskStates(state))
    assert hook.acancel.await_count == cancels
