"""Operators: deferral decisions, completion handler, reattach, result rules, validation, on_kill."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider._compat import AirflowException, AirflowFailException, TaskDeferred
from fal_provider.exceptions import (
    FalIntentNotRecorded,
    FalNotFoundError,
    FalPermanentRequestFailed,
    FalRequestFailed,
    FalServerError,
    FalTimeoutError,
    FalValidationError,
)
from fal_provider.models import RequestOptions
from fal_provider.operators.fal import (
    FalCancelOperator,
    FalInferenceOperator,
    FalRequestLink,
    FalResultOperator,
    FalSubmitOperator,
)
from fal_provider.operators.lifecycle import request_url
from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import (
    APP,
    FakeStateStore,
    done,
    install_hook,
    make_context,
    make_hook,
    make_ref,
    pushed,
    queued,
    running,
)

REF = make_ref()


def inference(hook: MagicMock, **kwargs: Any) -> FalInferenceOperator:
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("max_poll_interval", 0.02)
    op = FalInferenceOperator(task_id="t2i", app_id=APP, arguments={"prompt": "a cat"}, **kwargs)
    install_hook(op, hook)
    return op


# ----------------------------------------------------------------------------- deferral


def test_defers_with_trigger_when_not_done() -> None:
    hook = make_hook([queued()])
    op = inference(hook, deferrable=True, timeout=600, wait_mode="stream", log_fal_logs=True)
    store = FakeStateStore()
    context = make_context(store)
    before = time.time()
    with pytest.raises(TaskDeferred) as exc:
        op.execute(context)
    trigger = exc.value.trigger
    assert isinstance(trigger, FalRequestTrigger)
    _, kwargs = trigger.serialize()
    assert kwargs["request"] == REF.to_xcom()
    assert kwargs["wait_mode"] == "stream" and kwargs["log_fal_logs"] is True
    assert before + 600 <= kwargs["end_time"] <= time.time() + 600
    assert exc.value.method_name == "execute_complete"
    assert exc.value.timeout is not None and exc.value.timeout.total_seconds() > 600  # backstop only
    hook.submit.assert_called_once()
    # reference, link and stored request exist before deferring
    assert pushed(context)["fal_request"] == REF.to_xcom()
    assert pushed(context)["fal_request_url"] == REF.status_url
    assert store.data["fal_request"]["request"] == REF.to_xcom()
    assert store.data["fal_request"]["run_id"] == "r" and store.data["fal_request"]["fingerprint"]


def test_already_done_before_deferring_does_not_defer() -> None:
    hook = make_hook([done()], result={"images": [{"url": "u"}], "seed": 3})
    op = inference(hook, deferrable=True, select="seed")
    op.defer = MagicMock(side_effect=AssertionError("must not defer"))  # type: ignore[method-assign]
    assert op.execute(make_context()) == 3


def test_failed_before_deferring_fails_like_execute_complete() -> None:
    hook = make_hook([done(error="Runner disconnected", error_type="runner_disconnected")])
    hook.get_result.side_effect = FalNotFoundError("gone")
    op = inference(hook, deferrable=True)
    with pytest.raises(FalRequestFailed, match="Runner disconnected") as err:
        op.execute(make_context())
    assert err.value.retryable is True


def test_non_deferrable_waits_on_worker() -> None:
    hook = make_hook([queued(), queued(), running(), done()], result={"ok": 1})
    op = inference(hook, deferrable=False)
    assert op.execute(make_context()) == {"ok": 1}
    assert hook.get_status.call_count == 4


def test_non_deferrable_timeout_cancels_and_retries() -> None:
    hook = make_hook()
    hook.get_status.side_effect = None
    hook.get_status.return_value = queued()
    op = inference(hook, deferrable=False, timeout=0.2)
    with pytest.raises(FalTimeoutError):
        op.execute(make_context())
    hook.cancel.assert_called_once()


# ----------------------------------------------------------------------------- completion


@pytest.mark.parametrize("event", [None, "success", {}, {"status": "cancelled", "request": REF.to_xcom()}])
def test_completion_rejects_unexpected_events(event: Any) -> None:
    op = inference(make_hook())
    with pytest.raises(AirflowException, match="fal trigger event"):
        op.execute_complete(make_context(), event=event)


def test_completion_rejects_event_without_valid_request() -> None:
    op = inference(make_hook())
    with pytest.raises(AirflowException, match="request reference"):
        op.execute_complete(make_context(), event={"status": "success", "request": {"app_id": APP}})


def test_execute_complete_success_fetches_result_on_worker_and_keeps_store() -> None:
    hook = make_hook(result={"images": [{"url": "http://cdn/x.png"}]})
    store = FakeStateStore()
    store.data["fal_request"] = REF.to_xcom()
    op = inference(hook, select="images.0.url")
    value = op.execute_complete(make_context(store), event={"status": "success", "request": REF.to_xcom()})
    assert value == "http://cdn/x.png"
    assert hook.get_result.call_args.args[0].request_id == "req-1"
    # Kept: Airflow records the success only after this returns; a try after a lost success reattaches.
    assert store.data["fal_request"] == REF.to_xcom()


def test_failed_request_uses_result_error_for_validation() -> None:
    hook = make_hook()
    hook.get_result.side_effect = FalValidationError("422: prompt: field required")
    op = inference(hook)
    event = {"status": "failed", "request": REF.to_xcom(), "error": "Unprocessable", "error_type": None}
    with pytest.raises(FalValidationError) as err:
        op.execute_complete(make_context(), event=event)
    assert isinstance(err.value, AirflowFailException)  # no Airflow retry
    assert err.value.request_id == "req-1"


def test_failed_request_permanent_error_type_from_status() -> None:
    hook = make_hook()
    hook.get_result.side_effect = FalNotFoundError("result expired")
    event = {
        "status": "failed",
        "request": REF.to_xcom(),
        "error": "blocked",
        "error_type": "content_policy_violation",
    }
    with pytest.raises(FalPermanentRequestFailed, match="blocked"):
        inference(hook).execute_complete(make_context(), event=event)


def test_timeout_event_cancels_and_raises_retryable() -> None:
    hook = make_hook()
    event = {"status": "timeout", "request": REF.to_xcom(), "error": "deadline"}
    with pytest.raises(FalTimeoutError) as err:
        inference(hook).execute_complete(make_context(), event=event)
    assert err.value.retryable is True
    hook.cancel.assert_called_once()
    hook.get_result.assert_not_called()


def test_timeout_event_cancel_failure_does_not_hide_timeout() -> None:
    hook = make_hook()
    hook.cancel.side_effect = FalServerError("cancel broke")
    with pytest.raises(FalTimeoutError):
        inference(hook).execute_complete(
            make_context(), event={"status": "timeout", "request": REF.to_xcom()}
        )


def test_error_event_rebuilds_typed_error() -> None:
    event = {
        "status": "error",
        "request": REF.to_xcom(),
        "error": "401 bad key",
        "error_class": "FalAuthError",
        "retryable": False,
    }
    with pytest.raises(AirflowFailException, match="401 bad key"):
        inference(make_hook()).execute_complete(make_context(), event=event)
    event.update(error_class="ConnectError", retryable=True)
    with pytest.raises(FalServerError, match="ConnectError"):
        inference(make_hook()).execute_complete(make_context(), event=event)


# ----------------------------------------------------------------------------- reattach


def test_retry_reattaches_to_running_request_without_submitting() -> None:
    store = FakeStateStore()
    store.data["fal_request"] = make_ref("old").to_xcom()
    hook = make_hook([running()])
    op = inference(hook, deferrable=True)
    with pytest.raises(TaskDeferred) as exc:
        op.execute(make_context(store))
    hook.submit.assert_not_called()
    assert hook.get_status.call_count == 1  # the reattach check's status is reused, not asked again
    assert exc.value.trigger.serialize()[1]["request"]["request_id"] == "old"


def test_retry_reattaches_to_succeeded_request_and_returns_result() -> None:
    store = FakeStateStore()
    store.data["fal_request"] = make_ref("old").to_xcom()
    hook = make_hook([done()], result={"paid": "once"})
    assert inference(hook).execute(make_context(store)) == {"paid": "once"}
    hook.submit.assert_not_called()
    assert hook.get_status.call_count == 1
    assert store.data["fal_request"]["request_id"] == "old"  # kept until a later try or run


def test_failing_to_store_the_request_still_waits_for_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submit is paid: losing the reattach record must not abandon the running request."""

    writes: list[Any] = []

    def unavailable_after_the_intent(original: Any) -> Any:
        def write(*args: Any, **kwargs: Any) -> None:
            writes.append(args)
            if len(writes) > 1:  # the intent (before the POST) is written; the request id is not
                raise RuntimeError("state store unavailable")
            original(*args, **kwargs)

        return write

    hook = make_hook([done()], result={"waited": True})
    store = FakeStateStore()
    monkeypatch.setattr(store, "set", unavailable_after_the_intent(store.set))  # Airflow >= 3.3
    from airflow.sdk import Variable

    monkeypatch.setattr(Variable, "set", unavailable_after_the_intent(Variable.set))  # below 3.3
    context = make_context(store)
    with caplog.at_level("WARNING"):
        assert inference(hook).execute(context) == {"waited": True}
    hook.submit.assert_called_once()
    hook.get_result.assert_called_once()
    assert "Could not store fal request" in caplog.text


def test_an_intent_that_cannot_be_recorded_stops_the_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A try that cannot record what it is about to pay for (a stale execution whose task instance
    Airflow replaced answers 404) must not pay: a request nobody can find would be paid twice."""

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Task instance not found")

    hook = make_hook([done()], result={"waited": True})
    store = FakeStateStore()
    monkeypatch.setattr(store, "set", unavailable)
    from airflow.sdk import Variable

    monkeypatch.setattr(Variable, "set", unavailable)
    with pytest.raises(FalIntentNotRecorded, match="nothing was submitted"):
        inference(hook).execute(make_context(store))
    hook.submit.assert_not_called()


@pytest.mark.parametrize(
    "status_or_error", [done(error="boom", error_type="runner_server_error"), FalNotFoundError("404")]
)
def test_retry_resubmits_failed_or_unknown_request(status_or_error: Any) -> None:
    store = FakeStateStore()
    store.data["fal_request"] = make_ref("old").to_xcom()
    hook = make_hook([status_or_error, done()], result={"new": True})
    assert inference(hook).execute(make_context(store)) == {"new": True}
    hook.submit.assert_called_once()


def test_reattach_disabled_always_submits() -> None:
    store = FakeStateStore()
    store.data["fal_request"] = make_ref("old").to_xcom()
    hook = make_hook([done()])
    inference(hook, reattach_on_retry=False).execute(make_context(store))
    hook.submit.assert_called_once()
    assert store.data["fal_request"]["request_id"] == "old"  # not touched


def test_transient_error_while_checking_stored_request_does_not_resubmit() -> None:
    store = FakeStateStore()
    store.data["fal_request"] = make_ref("old").to_xcom()
    hook = make_hook([FalServerError("503")])
    with pytest.raises(FalServerError):
        inference(hook).execute(make_context(store))
    hook.submit.assert_not_called()


# ----------------------------------------------------------------------------- validation


def test_options_validated_at_parse_and_passed_to_submit() -> None:
    with pytest.raises(ValueError, match="priority"):
        FalInferenceOperator(task_id="x", app_id=APP, priority="urgent")
    with pytest.raises(ValueError, match="either as options"):
        FalInferenceOperator(task_id="x", app_id=APP, options="{{ params.o }}", priority="low")
    hook = make_hook([done()])
    op = inference(hook, options={"store_io": False}, priority="low", start_timeout=30)
    op.execute(make_context())
    options = hook.submit.call_args.kwargs["options"]
    assert options == RequestOptions(priority="low", store_io=False, start_timeout=30)


def test_templated_options_validated_after_rendering() -> None:
    op = inference(make_hook([done()]), options={"priority": "{{ params.p }}"})
    op.options = {"priority": "urgent"}  # what rendering produced
    with pytest.raises(ValueError, match="priority"):
        op.execute(make_context())


def test_wait_mode_validation() -> None:
    with pytest.raises(ValueError, match="needs deferrable=True"):
        FalInferenceOperator(task_id="x", app_id=APP, wait_mode="webhook", deferrable=False)
    with pytest.raises(ValueError, match="Unknown wait_mode"):
        FalInferenceOperator(task_id="x", app_id=APP, wait_mode="sometimes")


def test_arguments_must_be_a_dict_after_rendering() -> None:
    hook = make_hook([done()])
    op = inference(hook)
    op.arguments = '{"prompt": "from json"}'  # non-native templating gives a string
    op.execute(make_context())
    assert hook.submit.call_args.args[1] == {"prompt": "from json"}
    op.arguments = ["not", "a", "dict"]
    with pytest.raises(AirflowFailException, match="arguments must be a dict"):
        op.execute(make_context())
    op.arguments = "{'prompt': 'python repr, not JSON'}"  # a templated dict rendered as text
    with pytest.raises(AirflowFailException, match="render_template_as_native_obj=True"):
        op.execute(make_context())
    assert hook.submit.call_count == 1  # nothing paid for a bad input


def test_template_fields() -> None:
    assert {"app_id", "arguments", "path", "headers"} <= set(FalInferenceOperator.template_fields)
    assert FalInferenceOperator.template_fields_renderers["arguments"] == "json"
    assert "request" in FalResultOperator.template_fields and "request" in FalCancelOperator.template_fields


def test_deferrable_default_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert FalInferenceOperator(task_id="x", app_id=APP).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert FalInferenceOperator(task_id="y", app_id=APP).deferrable is False


# ----------------------------------------------------------------------------- other operators


def test_submit_operator_returns_small_reference() -> None:
    hook = make_hook()
    op = FalSubmitOperator(task_id="s", app_id=APP, arguments={"prompt": "x"}, path="/sub")
    install_hook(op, hook)
    context = make_context()
    assert op.execute(context) == REF.to_xcom()
    assert hook.submit.call_args.kwargs["path"] == "/sub"
    assert pushed(context)["fal_request_url"] == REF.status_url


def test_result_operator_waits_and_shapes(tmp_path: Any) -> None:
    hook = make_hook([running(), done()], result={"images": [{"url": "http://cdn/u.png"}]})
    op = FalResultOperator(
        task_id="r", request=REF.to_xcom(), poll_interval=0.01, output_path=f"file://{tmp_path}"
    )
    install_hook(op, hook)
    manifest = op.execute(make_context())
    assert manifest["result_path"].endswith("req-1.json") and manifest["media_count"] == 1


def test_result_operator_bad_reference_is_clear() -> None:
    op = FalResultOperator(task_id="r", request={"request_id": "x"})
    install_hook(op, make_hook())
    with pytest.raises(AirflowFailException, match="app_id"):
        op.execute(make_context())


@pytest.mark.parametrize("outcome", ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"])
def test_cancel_operator_never_fails_on_finished(outcome: str) -> None:
    hook = make_hook()
    hook.cancel.return_value = outcome
    op = FalCancelOperator(task_id="c", request=REF.model_dump_json())
    install_hook(op, hook)
    assert op.execute(make_context()) == outcome


def test_on_kill_cancels_current_request_quietly() -> None:
    hook = make_hook()
    op = inference(hook)
    op.on_kill()  # nothing submitted yet: nothing to cancel
    hook.cancel.assert_not_called()
    op._request = REF
    hook.cancel.side_effect = FalServerError("down")
    op.on_kill()  # logged, not raised
    hook.cancel.assert_called_once_with(REF)
    op.cancel_on_kill = False
    op.on_kill()
    assert hook.cancel.call_count == 1


def test_link_points_at_dashboard_for_fal_and_status_url_elsewhere() -> None:
    assert request_url(REF, "https://queue.fal.run") == "https://fal.ai/dashboard/requests?requestId=req-1"
    assert request_url(REF, "http://127.0.0.1:8000/queue") == REF.status_url
    page = "http://127.0.0.1:8000/_emulator/requests/{request_id}/view?app={app_id}"
    assert request_url(REF, "http://127.0.0.1:8000/queue", page) == (
        f"http://127.0.0.1:8000/_emulator/requests/req-1/view?app={REF.app_id}"
    ), "a connection's own request page wins, on fal and off it"
    assert request_url(REF, "https://queue.fal.run", page).startswith("http://127.0.0.1:8000/_emulator/")
    assert FalRequestLink().name == "fal request"


def test_submit_parameters_work_with_partial_expand_and_reject_typos() -> None:
    """Airflow's mapping checks only see parameters of metaclass-wrapped ``__init__`` methods."""
    from airflow.sdk import DAG

    with DAG("mapped", schedule=None):
        mapped = FalInferenceOperator.partial(task_id="m", app_id=APP, priority="low").expand(
            arguments=[{"prompt": "a"}, {"prompt": "b"}]
        )
        FalSubmitOperator.partial(task_id="s", app_id=APP, webhook_wake_task_id="w").expand(
            arguments=[{"prompt": "a"}]
        )
    assert mapped.partial_kwargs["priority"] == "low"
    with pytest.raises(TypeError, match="priorty"):
        FalInferenceOperator(task_id="typo", app_id=APP, priorty="low")
    op = FalSubmitOperator(task_id="s2", app_id=APP, arguments={"p": 1}, path="/x", store_io=False)
    assert (op.app_id, op.arguments, op.path, op.options) == (APP, {"p": 1}, "/x", {"store_io": False})
