"""Airflow < 3.3 cancel-on-kill: ``run()`` catches the triggerer's cancellation and cancels the fal
request only when the task instance left ``deferred`` (a user action), never on a restart or move.

The version flag is patched so both branches run on either venv; the Task SDK lookup is faked at
``RuntimeTaskInstance.get_task_states`` (the real name on Airflow 3.1 and 3.3), so the query shape
and the answer parsing are the real code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock, patch

import pytest
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

from fal_provider.exceptions import FalServerError
from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import install_hook, queued
from tests.unit.triggers.helpers import REF, async_hook, trigger


class TaskStates:
    """Answers ``get_task_states`` like the Execution API: ``{run_id: {task key: state}}``."""

    def __init__(self, state: str | None = "failed", key: str = "t", error: Exception | None = None) -> None:
        self.answer = {} if state is None else {"r": {key: state}}
        self.error = error
        self.queries: list[dict[str, Any]] = []

    def __call__(self, **query: Any) -> dict[str, Any]:
        self.queries.append(query)
        if self.error is not None:
            raise self.error
        return self.answer


@pytest.fixture
def legacy() -> Iterator[None]:
    with patch("fal_provider.triggers.fal.AIRFLOW_V_3_3_PLUS", False):
        yield


def deferred_trigger(map_index: int = -1, **kwargs: Any) -> FalRequestTrigger:
    trig = trigger(**kwargs)
    trig.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=map_index)  # type: ignore[assignment]
    return trig


@contextlib.asynccontextmanager
async def waiting_run(
    trig: FalRequestTrigger, hook: MagicMock, states: TaskStates
) -> AsyncIterator[asyncio.Future[Any]]:
    """``run()`` started on a request that stays queued, once it has polled: ready to be cancelled."""
    hook.aget_status.side_effect = None
    hook.aget_status.return_value = queued()
    with patch.object(RuntimeTaskInstance, "get_task_states", side_effect=states):
        task = asyncio.ensure_future(install_hook(trig, hook).run().__anext__())
        while hook.aget_status.await_count == 0:
            await asyncio.sleep(0.01)
        yield task


async def cancel_while_waiting(trig: FalRequestTrigger, hook: MagicMock, states: TaskStates) -> None:
    """Cancel a waiting ``run()`` as the triggerer would, and insist the cancellation comes back out."""
    async with waiting_run(trig, hook, states) as task:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.usefixtures("legacy")
async def test_user_kill_cancels_the_request_once() -> None:
    hook, states = async_hook(), TaskStates("failed")
    trig = deferred_trigger()
    await cancel_while_waiting(trig, hook, states)
    hook.acancel.assert_awaited_once()
    assert hook.acancel.await_args.args[0].request_id == REF["request_id"]
    assert states.queries == [{"dag_id": "d", "task_ids": ["t"], "run_ids": ["r"], "map_index": -1}]
    await trig.on_kill()  # a later on_kill (or a second cancel) does not cancel again
    hook.acancel.assert_awaited_once()


@pytest.mark.usefixtures("legacy")
@pytest.mark.parametrize("state", ["success", "scheduled", "up_for_retry", "none"])
async def test_any_state_other_than_deferred_counts_as_a_kill(state: str) -> None:
    hook = async_hook()
    await cancel_while_waiting(deferred_trigger(), hook, TaskStates(state))
    hook.acancel.assert_awaited_once()


@pytest.mark.usefixtures("legacy")
async def test_restart_or_redistribution_keeps_the_request() -> None:
    hook = async_hook()
    await cancel_while_waiting(deferred_trigger(), hook, TaskStates("deferred"))
    hook.acancel.assert_not_awaited()


@pytest.mark.usefixtures("legacy")
async def test_mapped_task_is_looked_up_by_its_api_key() -> None:
    hook, states = async_hook(), TaskStates("deferred", key="t_3")
    await cancel_while_waiting(deferred_trigger(map_index=3), hook, states)
    assert states.queries[0]["map_index"] == 3
    hook.acancel.assert_not_awaited()  # "t_3" read as deferred, not as missing

    hook = async_hook()
    await cancel_while_waiting(deferred_trigger(map_index=3), hook, TaskStates("failed", key="t_3"))
    hook.acancel.assert_awaited_once()


@pytest.mark.usefixtures("legacy")
@pytest.mark.parametrize(
    "states",
    [TaskStates(error=RuntimeError("supervisor gone")), TaskStates(state=None)],
    ids=["error", "missing"],
)
async def test_unknown_state_cancels_nothing(states: TaskStates) -> None:
    hook = async_hook()
    await cancel_while_waiting(deferred_trigger(), hook, states)
    hook.acancel.assert_not_awaited()


@pytest.mark.usefixtures("legacy")
async def test_no_task_instance_or_flag_off_does_not_ask() -> None:
    hook, states = async_hook(), TaskStates("failed")
    await cancel_while_waiting(trigger(), hook, states)  # trigger not bound to a task instance
    await cancel_while_waiting(deferred_trigger(cancel_on_kill=False), hook, states)
    assert states.queries == []
    hook.acancel.assert_not_awaited()


@pytest.mark.usefixtures("legacy")
async def test_cancel_failure_is_swallowed_and_the_cancellation_still_propagates() -> None:
    hook = async_hook()
    hook.acancel = AsyncMock(side_effect=FalServerError("fal is down"))
    # raises CancelledError (checked inside), not FalServerError
    await cancel_while_waiting(deferred_trigger(), hook, TaskStates("failed"))
    hook.acancel.assert_awaited_once()


async def test_airflow_3_3_leaves_it_to_on_kill() -> None:
    hook, states = async_hook(), TaskStates("failed")
    with patch("fal_provider.triggers.fal.AIRFLOW_V_3_3_PLUS", True):
        await cancel_while_waiting(deferred_trigger(), hook, states)
    assert states.queries == []
    hook.acancel.assert_not_awaited()
