"""Never pay twice, never waste a request on a shutdown: the operator-side rules, in isolation.

* the stored request survives the success (Airflow records it only later) and is reused only by
  the same DAG run and for the same inputs;
* SIGTERM (a real signal to this process) interrupts the wait: a user's kill cancels the request,
  a shutdown keeps it and ends the try retryable;
* the trigger's view of the connection is checked before the submit.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider._compat import AirflowFailException, TaskDeferred
from fal_provider.exceptions import FalInputError, FalTransientError
from fal_provider.hooks.fal import FalHook
from fal_provider.operators import lifecycle
from fal_provider.operators.fal import FalInferenceOperator, FalResultOperator, check_trigger_connection
from fal_provider.operators.lifecycle import RequestStore
from tests.unit.operators.fakes import (
    APP,
    FakeStateStore,
    done,
    install_hook,
    make_context,
    make_hook,
    make_ref,
    queued,
    running,
)

KEY = "durable-id:durable-secret"


def inference(hook: MagicMock, **kwargs: Any) -> FalInferenceOperator:
    kwargs.setdefault("deferrable", True)
    op = FalInferenceOperator(
        task_id="t", app_id=APP, arguments={"prompt": "a cat"}, poll_interval=0.01, **kwargs
    )
    install_hook(op, hook)
    return op


# ----------------------------------------------------------------------- kept until durable


def test_a_try_after_an_unrecorded_success_fetches_the_result_without_submitting() -> None:
    """Try 1 fetched the result, then its worker died before Airflow recorded the success."""
    store = FakeStateStore()
    first = make_hook([queued()], result={"paid": "once"})
    with pytest.raises(TaskDeferred):
        inference(first).execute(make_context(store))
    event = {"status": "success", "request": make_ref().to_xcom()}
    assert inference(first).execute_complete(make_context(store), event=event) == {"paid": "once"}

    second = make_hook([done()], result={"paid": "once"})
    assert inference(second).execute(make_context(store)) == {"paid": "once"}
    second.submit.assert_not_called()
    second.get_result.assert_called_once()


def test_a_new_dag_run_never_reuses_the_stored_request() -> None:
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):
        inference(make_hook([queued()])).execute(make_context(store))

    next_run = make_context(store)
    next_run["ti"].run_id = "r2"
    if "task_state_store" not in next_run:  # the Variable fallback: same key for every run
        assert RequestStore(next_run).slot.variable_key == RequestStore(make_context(store)).slot.variable_key
    hook = make_hook([done()], result={"fresh": True})
    assert inference(hook).execute(next_run) == {"fresh": True}
    hook.submit.assert_called_once()
    assert store.data["fal_request"]["run_id"] == "r2", "the new run's submit replaces the old record"


def test_changed_inputs_submit_a_new_request() -> None:
    """A clear after upstream changed must not return the result of other inputs."""
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):
        inference(make_hook([queued()])).execute(make_context(store))
    hook = make_hook([done()], result={"new": True})
    op = inference(hook)
    op.arguments = {"prompt": "a dog"}
    assert op.execute(make_context(store)) == {"new": True}
    hook.submit.assert_called_once()
    hook.get_status.assert_called_once()  # only the new request's; the old one was not even asked


def test_a_reference_stored_by_an_older_version_is_still_reattached() -> None:
    store = FakeStateStore()
    store.data["fal_request"] = make_ref("old").to_xcom()
    hook = make_hook([running(), running()])
    with pytest.raises(TaskDeferred) as deferred:
        inference(hook).execute(make_context(store))
    hook.submit.assert_not_called()
    assert deferred.value.trigger.serialize()[1]["request"]["request_id"] == "old"


# ----------------------------------------------------------------------------------- SIGTERM


@pytest.fixture
def task_sdk_handler() -> Iterator[list[int]]:
    """Stands in for the Task SDK's SIGTERM handler (which would call on_kill) during the test."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGTERM, previous)


def sigterm_on_second_status(hook: MagicMock) -> None:
    """The second status GET of a worker-side wait is interrupted by a real SIGTERM."""
    answers = iter([queued(), "sigterm"])

    def get_status(*args: Any, **kwargs: Any) -> Any:
        answer = next(answers)
        if answer == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        return answer

    hook.get_status.side_effect = get_status


def state_is(monkeypatch: pytest.MonkeyPatch, state: str | Exception) -> list[dict[str, Any]]:
    """What the Execution API answers for this task instance (``RuntimeTaskInstance.get_task_states``)."""
    queries: list[dict[str, Any]] = []

    def get_task_states(**query: Any) -> dict[str, Any]:
        queries.append(query)
        if isinstance(state, Exception):
            raise state
        return {"r": {"t": state}}

    monkeypatch.setattr("fal_provider.triggers.kill._get_task_states", get_task_states)
    return queries


def test_shutdown_keeps_the_request_and_ends_the_try_retryable(
    monkeypatch: pytest.MonkeyPatch, task_sdk_handler: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    queries = state_is(monkeypatch, "running")
    hook = make_hook()
    sigterm_on_second_status(hook)
    op = inference(hook, deferrable=False)
    store = FakeStateStore()
    with pytest.raises(lifecycle.FalWorkerShutdown) as raised:
        op.execute(make_context(store))
    assert isinstance(raised.value, FalTransientError) and not isinstance(raised.value, AirflowFailException)
    hook.cancel.assert_not_called()
    assert queries and queries[0]["task_ids"] == ["t"]
    assert "left running and the retry reattaches" in capsys.readouterr().out  # the task log
    assert task_sdk_handler == [], "the Task SDK's handler (on_kill: cancel) must not have run"

    # The retry reattaches to the request the shutdown left running.
    retry = make_hook([running(), done()], result={"kept": True})
    assert inference(retry, deferrable=False).execute(make_context(store)) == {"kept": True}
    retry.submit.assert_not_called()


@pytest.mark.parametrize("state", ["failed", "success", "restarting", "cleared"])
def test_a_user_kill_cancels_the_request(
    monkeypatch: pytest.MonkeyPatch, task_sdk_handler: list[int], state: str
) -> None:
    state_is(monkeypatch, state)
    hook = make_hook()
    sigterm_on_second_status(hook)
    with pytest.raises(lifecycle.FalWorkerShutdown):
        inference(hook, deferrable=False).execute(make_context())
    hook.cancel.assert_called_once()
    assert hook.cancel.call_args.args[0].request_id == "req-1"


def test_an_unknown_state_keeps_the_request(
    monkeypatch: pytest.MonkeyPatch, task_sdk_handler: list[int]
) -> None:
    state_is(monkeypatch, RuntimeError("execution API unreachable"))
    hook = make_hook()
    sigterm_on_second_status(hook)
    with pytest.raises(lifecycle.FalWorkerShutdown):
        inference(hook, deferrable=False).execute(make_context())
    hook.cancel.assert_not_called()


def test_the_result_operator_keeps_the_request_on_shutdown_too(
    monkeypatch: pytest.MonkeyPatch, task_sdk_handler: list[int]
) -> None:
    state_is(monkeypatch, "running")
    hook = make_hook()
    sigterm_on_second_status(hook)
    op = FalResultOperator(task_id="t", request=make_ref().to_xcom(), deferrable=False, poll_interval=0.01)
    install_hook(op, hook)
    with pytest.raises(lifecycle.FalWorkerShutdown):
        op.execute(make_context())
    hook.cancel.assert_not_called()


def test_the_task_sdk_handler_is_back_once_the_wait_is_over(task_sdk_handler: list[int]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert inference(make_hook([done()]), deferrable=False).execute(make_context()) is not None
    assert signal.getsignal(signal.SIGTERM) is before
    os.kill(os.getpid(), signal.SIGTERM)
    assert task_sdk_handler == [signal.SIGTERM]


def test_after_deferring_on_kill_does_not_cancel_the_request_the_trigger_waits_for() -> None:
    """A SIGTERM while the deferring process exits reaches the Task SDK's handler (on_kill)."""
    hook = make_hook([queued()])
    op = inference(hook)
    with pytest.raises(TaskDeferred):
        op.execute(make_context())
    op.on_kill()
    hook.cancel.assert_not_called()


def test_execution_timeout_still_cancels_through_on_kill() -> None:
    """Airflow calls on_kill after an execution_timeout; that is not a shutdown."""
    hook = make_hook()
    op = inference(hook, deferrable=False)
    op._request = make_ref()
    op.on_kill()
    hook.cancel.assert_called_once()


# ------------------------------------------------------------------- trigger connection check


def conn_json(key: str = KEY, host: str = "http://127.0.0.1:9/queue") -> str:
    return f'{{"conn_type": "fal", "password": "{key}", "host": "{host}"}}'


@pytest.fixture
def fresh_connection_cache() -> Iterator[None]:
    from fal_provider.hooks._calls import clear_connections

    clear_connections()
    yield
    clear_connections()


def test_connection_check_passes_when_the_trigger_sees_the_same_connection(
    monkeypatch: pytest.MonkeyPatch, fresh_connection_cache: None
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DURABLE", conn_json())
    check_trigger_connection(FalHook("fal_durable"), "fal_durable")


def test_connection_check_fails_before_paying_when_the_trigger_cannot_see_it(
    monkeypatch: pytest.MonkeyPatch, fresh_connection_cache: None
) -> None:
    """What ``airflow dags test`` does to a connection stored only in the metadata database."""
    from fal_provider._compat import AirflowNotFoundException

    monkeypatch.setenv("AIRFLOW_CONN_FAL_DURABLE", conn_json())

    async def invisible(conn_id: str) -> Any:
        raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")

    monkeypatch.setattr("fal_provider.hooks.fal._aget_connection", invisible)
    with pytest.raises(FalInputError, match="dags test") as raised:
        check_trigger_connection(FalHook("fal_durable"), "fal_durable")
    assert "AIRFLOW_CONN_FAL_DURABLE" in str(raised.value)


def test_connection_check_fails_when_the_trigger_would_use_another_key(
    monkeypatch: pytest.MonkeyPatch, fresh_connection_cache: None
) -> None:
    """``fal_default`` invisible to the trigger falls back to FAL_KEY: another account, another host."""
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DURABLE", conn_json())
    monkeypatch.setenv("AIRFLOW_CONN_FAL_OTHER", conn_json(key="other-id:other-secret", host="http://x/q"))
    with pytest.raises(FalInputError, match="differently") as raised:
        check_trigger_connection(FalHook("fal_durable"), "fal_other")
    assert "other-secret" not in str(raised.value) and "durable-secret" not in str(raised.value)


def test_deferrable_inference_checks_before_submitting(checked_trigger_connections: list[str]) -> None:
    hook = make_hook([queued()])
    with pytest.raises(TaskDeferred):
        inference(hook, fal_conn_id="fal_x").execute(make_context())
    assert checked_trigger_connections == ["fal_x"]
    inference(make_hook([done()]), deferrable=False).execute(make_context())
    assert checked_trigger_connections == ["fal_x"], "a worker-side wait needs no trigger"


def test_the_sensor_keeps_the_request_on_shutdown_and_cancels_on_a_user_kill(
    monkeypatch: pytest.MonkeyPatch, task_sdk_handler: list[int]
) -> None:
    from fal_provider.sensors.fal import FalRequestSensor

    for state, cancels in (("running", 0), ("failed", 1)):
        state_is(monkeypatch, state)
        hook = make_hook()
        sigterm_on_second_status(hook)
        sensor = FalRequestSensor(
            task_id="t", request=make_ref().to_xcom(), deferrable=False, poke_interval=0.01
        )
        install_hook(sensor, hook)
        with pytest.raises(lifecycle.FalWorkerShutdown):
            sensor.execute(make_context())
        assert hook.cancel.call_count == cancels, state


# ------------------------------------------------------------------ a wait that broke after a submit


def test_a_wait_that_failed_for_good_cancels_the_request() -> None:
    """The trigger could not read the key: no try will come back for the request."""
    hook = make_hook()
    event = {
        "status": "error",
        "request": make_ref().to_xcom(),
        "error": "No fal API key",
        "error_class": "FalMissingCredentialsError",
    }
    with pytest.raises(AirflowFailException):
        inference(hook).execute_complete(make_context(), event=event)
    hook.cancel.assert_called_once()


def test_a_wait_that_failed_transiently_leaves_the_request_for_the_retry() -> None:
    hook = make_hook()
    event = {
        "status": "error",
        "request": make_ref().to_xcom(),
        "error": "HTTP 503",
        "error_class": "FalServerError",
    }
    with pytest.raises(FalTransientError):
        inference(hook).execute_complete(make_context(), event=event)
    hook.cancel.assert_not_called()
