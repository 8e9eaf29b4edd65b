"""What differs between the floor (Airflow 3.1) and the newest release, and the fallbacks that cover it.

* ``task_state_store`` (3.3+) vs the Variable fallback of ``RequestStore``: both are driven here on
  every version (a context without ``task_state_store`` is what a 3.1 worker hands the operator).
* Trigger ``on_kill`` (3.3+): below 3.3 the trigger only sees its coroutine cancelled, for a user's
  kill and a triggerer restart alike (``triggers/kill.py`` tells them apart; its own tests cover the
  kill). Checked here on every version: a cancellation that is not known to be a kill never cancels
  fal, and the worker-side deadline cancel still works.
* Secret masking in async code: ``amask_secret`` is 3.3+, ``_compat`` supplies it on 3.1.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any
from unittest.mock import MagicMock

import pytest
from airflow.triggers.base import BaseTrigger

from fal_provider import _compat
from fal_provider._compat import AIRFLOW_V_3_3_PLUS, TaskDeferred
from fal_provider.exceptions import FalTimeoutError
from fal_provider.operators.fal import FalInferenceOperator
from fal_provider.operators.lifecycle import VARIABLE_PREFIX, RequestStore
from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import (
    APP,
    FakeStateStore,
    RequestVariables,
    done,
    install_hook,
    make_context,
    make_hook,
    make_ref,
    queued,
    running,
)

NEEDS_3_3 = pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS,
    reason="context['task_state_store'] and BaseTrigger.on_kill exist from Airflow 3.3",
)


def inference(hook: MagicMock) -> FalInferenceOperator:
    op = FalInferenceOperator(
        task_id="t2i", app_id=APP, arguments={"prompt": "a cat"}, deferrable=True, poll_interval=0.01
    )
    install_hook(op, hook)
    return op


# ----------------------------------------------------------------------------- request store


def test_variable_fallback_carries_the_request_to_the_next_try(request_variables: RequestVariables) -> None:
    store = FakeStateStore()
    first = make_hook([queued()])
    with pytest.raises(TaskDeferred):
        inference(first).execute(make_context(store, state_store=False))
    first.submit.assert_called_once()
    # The intent (written before the POST), then the request id over it (right after).
    (intent_key, intent), (key, raw) = request_variables.raw_writes
    assert intent_key == key and json.loads(intent)["request"] is None and json.loads(intent)["intent_at"]
    assert key.startswith(VARIABLE_PREFIX) and json.loads(raw)["request"]["request_id"] == "req-1"

    # Try 2 gets a fresh context (and fresh XComs); only the Variable remembers the request.
    second = make_hook([running(), running()])
    with pytest.raises(TaskDeferred) as deferred:
        inference(second).execute(make_context(store, state_store=False))
    second.submit.assert_not_called()
    assert deferred.value.trigger.serialize()[1]["request"]["request_id"] == "req-1"

    inference(second).execute_complete(
        make_context(store, state_store=False), event={"status": "success", "request": make_ref().to_xcom()}
    )
    assert store.data["fal_request"]["run_id"] == "r", "kept for a try after a success Airflow never recorded"


def test_variable_key_is_per_task_not_per_try_or_run() -> None:
    """One Variable per task (the next run overwrites it); the run id is checked inside the value."""

    def key(**identity: Any) -> str:
        ti = MagicMock(**{"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1, **identity})
        return RequestStore({"ti": ti}).slot.variable_key

    assert key(try_number=1) == key(try_number=2) == key(run_id="r2")
    assert len({key(), key(map_index=0), key(map_index=1), key(task_id="u"), key(dag_id="e")}) == 5


@NEEDS_3_3
def test_task_state_store_is_preferred_and_no_variable_is_written(
    request_variables: RequestVariables,
) -> None:
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):
        inference(make_hook([queued()])).execute(make_context(store, state_store=True))
    assert store.data["fal_request"]["request"]["request_id"] == "req-1"
    assert request_variables.raw_writes == []


def test_below_3_3_a_stray_task_state_store_is_ignored(
    request_variables: RequestVariables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version gate, not the context key, picks the store: below 3.3 the Variable is used."""
    monkeypatch.setattr("fal_provider.operators.lifecycle.AIRFLOW_V_3_3_PLUS", False)
    context = make_context(FakeStateStore(), state_store=True)
    with pytest.raises(TaskDeferred):
        inference(make_hook([queued()])).execute(context)
    assert context["task_state_store"].data == {}
    assert len(request_variables.raw_writes) == 2  # the intent, then the request


# ----------------------------------------------------------------------------- trigger on_kill


@NEEDS_3_3
def test_trigger_on_kill_overrides_the_3_3_hook() -> None:
    assert inspect.iscoroutinefunction(BaseTrigger.on_kill)
    assert FalRequestTrigger.on_kill is not BaseTrigger.on_kill


async def test_cancelled_trigger_never_cancels_the_fal_request() -> None:
    """Outside a triggerer no task state is known, as after a restart: cancelling fal there would kill
    a request that a restarted triggerer is about to pick up again."""
    hook = make_hook()
    hook.aget_status.side_effect = lambda *a, **k: queued()
    trig = FalRequestTrigger(request=make_ref().to_xcom(), poll_interval=0.01, max_poll_interval=0.01)
    task = asyncio.ensure_future(install_hook(trig, hook).run().__anext__())
    while hook.aget_status.await_count < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hook.acancel.assert_not_awaited()


def test_deadline_fallback_cancels_on_the_worker() -> None:
    """Without trigger on_kill the absolute deadline still ends the wait and cancels fal (worker side)."""
    hook = make_hook([done()])
    with pytest.raises(FalTimeoutError):
        inference(hook).execute_complete(
            make_context(), event={"status": "timeout", "request": make_ref().to_xcom()}
        )
    hook.cancel.assert_called_once()


# ----------------------------------------------------------------------------- secrets


async def test_async_masking_hides_the_key_on_every_version() -> None:
    from airflow.sdk._shared.secrets_masker import _secrets_masker  # type: ignore[import-not-found]

    secret = "fal-key-id:floor-version-secret-123"
    await _compat.amask_secret(secret)
    assert secret not in _secrets_masker().redact(f"key={secret}")
