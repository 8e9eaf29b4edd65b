"""Airflow 3.3 ``on_kill``: a trigger dropped because it moved to another triggerer keeps its request.

Airflow 3.3.2 cancels a trigger that is no longer assigned to its triggerer with the same
"user action" message as a mark-failed, so ``on_kill`` also runs when a peer took the trigger over
after this triggerer's heartbeat lapsed. The task instance is then still ``deferred``; only that
known state vetoes the cancel. The Task SDK lookup is faked at ``RuntimeTaskInstance.get_task_states``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest
from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import install_hook
from tests.unit.triggers.helpers import async_hook, trigger


def with_task_instance(**kwargs: Any) -> FalRequestTrigger:
    trig = trigger(**kwargs)
    trig.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)  # type: ignore[assignment]
    return trig


async def on_kill(trig: FalRequestTrigger, answer: Any) -> Any:
    hook = async_hook()
    lookup = answer if callable(answer) else (lambda **query: answer)
    with patch.object(RuntimeTaskInstance, "get_task_states", side_effect=lookup):
        await install_hook(trig, hook).on_kill()
    return hook


async def test_a_still_deferred_task_keeps_its_request() -> None:
    hook = await on_kill(with_task_instance(), {"r": {"t": "deferred"}})
    hook.acancel.assert_not_awaited()


@pytest.mark.parametrize("state", ["failed", "success", None])
async def test_a_user_action_still_cancels(state: str | None) -> None:
    hook = await on_kill(with_task_instance(), {"r": {"t": state}})
    hook.acancel.assert_awaited_once()


async def test_an_unknown_state_still_cancels() -> None:
    def broken(**query: Any) -> Any:
        raise RuntimeError("execution API down")

    hook = await on_kill(with_task_instance(), broken)
    hook.acancel.assert_awaited_once()
