"""The Airflow < 3.3 kill fallback against what a 3.1 triggerer really does, found in the deployment
tests on the floor venv:

- a cleared task instance exists with *no* state (JSON null), which the lookup must report as a
  user action, not as "unknown";
- the triggerer re-sends its cancel on every loop until ``run()`` returns, and a repeated cancel must
  not interrupt the lookup or the cancel call (an interrupted Task SDK call desynchronises 3.1's
  supervisor channel and can take the triggerer down).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from unittest.mock import AsyncMock, MagicMock, patch

import pytest
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.triggers.kill import CLEARED, finish_despite_cancels, task_instance_state
from tests.unit.triggers.helpers import async_hook
from tests.unit.triggers.test_kill_fallback import (  # noqa: F401  (legacy: a fixture, used by name)
    TaskStates,
    cancel_while_waiting,
    deferred_trigger,
    legacy,
    waiting_run,
)


class ClearedTaskStates(TaskStates):
    """The Execution API's answer for a cleared task instance: its key, with a null state."""

    def __init__(self) -> None:
        super().__init__("failed")
        self.answer = {"r": {"t": None}}  # type: ignore[dict-item]  # null is what the API sends


@pytest.mark.usefixtures("legacy")
async def test_cleared_task_instance_counts_as_a_kill() -> None:
    trig = deferred_trigger()
    with patch.object(RuntimeTaskInstance, "get_task_states", side_effect=ClearedTaskStates()):
        assert await task_instance_state(trig.task_instance) == CLEARED
    hook = async_hook()
    await cancel_while_waiting(trig, hook, ClearedTaskStates())
    hook.acancel.assert_awaited_once()


class SlowTaskStates(TaskStates):
    """A lookup that takes longer than the triggerer's loop, like a busy supervisor."""

    def __call__(self, **query: Any) -> dict[str, Any]:
        time.sleep(0.3)
        return super().__call__(**query)


async def cancel_repeatedly(trig: FalRequestTrigger, hook: MagicMock, states: TaskStates) -> None:
    """Cancel ``run()`` as a 3.1 triggerer does: again and again until it ends; the cancellation
    must still come out at the end."""
    async with waiting_run(trig, hook, states) as task:
        for _ in range(200):
            if task.done():
                break
            task.cancel()
            await asyncio.sleep(0.02)
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.usefixtures("legacy")
async def test_repeated_cancels_interrupt_neither_the_lookup_nor_the_cancel_call() -> None:
    finished: list[str] = []

    async def slow_cancel(ref: Any) -> str:
        await asyncio.sleep(0.3)
        finished.append(ref.request_id)
        return "CANCELLATION_REQUESTED"

    hook, states = async_hook(), SlowTaskStates("failed")
    hook.acancel = AsyncMock(side_effect=slow_cancel)
    await cancel_repeatedly(deferred_trigger(), hook, states)
    assert len(states.queries) == 1, "the lookup ran once, to its answer"
    assert len(finished) == 1, "the cancel call ran to its end despite the repeated cancels"


async def test_a_cleanup_cancelled_itself_ends_the_wait() -> None:
    """On shutdown the triggerer cancels every task, the cleanup included: no endless wait."""

    async def cancelled_cleanup() -> None:
        raise asyncio.CancelledError

    await asyncio.wait_for(finish_despite_cancels(cancelled_cleanup()), timeout=5)
