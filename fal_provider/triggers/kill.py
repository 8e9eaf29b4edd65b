"""Telling a user's kill from a triggerer restart on Airflow below 3.3.

Before 3.3 the triggerer has no ``on_kill`` hook: it cancels the trigger's task for every reason
alike (the user marked the task failed/success or cleared it, the triggerer shut down, the trigger
moved to another triggerer). Only the first should cancel the paid fal request. The task
instance's state tells them apart: a restart or redistribution leaves it ``deferred`` (the trigger
runs again elsewhere), a user action has already moved it on. The state is asked through the Task
SDK (``RuntimeTaskInstance.get_task_states``), which the triggerer serves from the Execution API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

#: The state a task instance keeps while its trigger is only being moved or restarted.
DEFERRED = "deferred"
#: Reported for a task instance that exists but has no state: a clear resets a deferred task to
#: ``None`` until the scheduler picks it up again, so "no state" is a user action, not "unknown".
CLEARED = "cleared"


def _state_key(task_id: str, map_index: int | None) -> str:
    """The Execution API keys a mapped instance as ``<task_id>_<map_index>``, others by task id."""
    if map_index is None or map_index < 0:
        return task_id
    return f"{task_id}_{map_index}"


def _get_task_states(**query: Any) -> dict[str, Any]:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    return RuntimeTaskInstance.get_task_states(**query)


def current_state(task_instance: Any) -> str | None:
    """The current state of a task instance, :data:`CLEARED` when it exists without one, or ``None``
    when the answer does not name it at all. Blocking (a Task SDK call); errors propagate."""
    map_index = getattr(task_instance, "map_index", None)
    states = _get_task_states(
        dag_id=task_instance.dag_id,
        task_ids=[task_instance.task_id],
        run_ids=[task_instance.run_id],
        map_index=map_index,
    )
    run_states = states.get(task_instance.run_id) or {}
    key = _state_key(task_instance.task_id, map_index)
    if key not in run_states:
        return None
    state = run_states[key]
    if state is None:
        return CLEARED
    return str(getattr(state, "value", state))


async def task_instance_state(task_instance: Any) -> str | None:
    """:func:`current_state` from a trigger.

    ``sync_to_async`` (not a plain thread) because the triggerer's Task SDK channel turns the blocking
    call back into a coroutine on the triggerer's own loop, which only asgiref's pairing allows.
    Errors propagate: the caller decides that an unknown state means "do not cancel".
    """
    from asgiref.sync import sync_to_async

    return await sync_to_async(current_state)(task_instance)


def is_user_kill(state: str | None) -> bool:
    """A known state other than ``deferred``: the user (or the scheduler on their behalf) moved the
    task on, so nothing will come back for this request. ``None`` (unknown) is not a kill."""
    return state is not None and state != DEFERRED


async def finish_despite_cancels(cleanup: Awaitable[None]) -> None:
    """Run ``cleanup`` to its end although the triggerer keeps cancelling the calling trigger.

    A triggerer below 3.3 re-sends its cancel on every loop (about once a second) until ``run()``
    returns, so a cleanup slower than that is cancelled again in the middle of a Task SDK call. That
    call's answer is then never read, and 3.1's supervisor channel (``TriggerCommsDecoder``) hands
    it to the next caller, which fails "Response read out of order"; when that caller is the
    triggerer's own state sync, the whole triggerer process exits. ``cleanup`` is bounded and never
    raises, so waiting it out is safe; it only stops early if it is cancelled itself (shutdown).
    """
    task = asyncio.ensure_future(cleanup)
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
