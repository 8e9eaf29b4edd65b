"""wait_mode="webhook": the trigger's record-then-backstop wait, its on_kill guard, and the operators
and sensor that submit with a callback URL and defer on it. The hook and the Variable reads are
faked; the receiver path over HTTP is covered by tests/integration/webhooks and tests/e2e/deployment."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import MagicMock, patch
from urllib.parse import parse_qs, urlsplit

import pytest

from fal_provider._compat import TaskDeferred
from fal_provider.exceptions import FalAuthError, FalServerError, FalValidationError
from fal_provider.operators.fal import FalInferenceOperator, FalSubmitOperator
from fal_provider.sensors.fal import FalRequestSensor
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.webhooks.store import WebhookRecord, record_key
from fal_provider.webhooks.urls import WebhookUrlError
from tests.unit.operators.fakes import APP, done, install_hook, make_context, make_hook, queued, running
from tests.unit.triggers.helpers import REF, async_hook, first_event

BASE_URL = "https://airflow.example.com/prefix"


class Variables:
    """Stands in for the Task SDK Variable reads the trigger makes; counts them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.reads = 0

    def record(self, status: str = "OK", error: str | None = None) -> None:
        record = WebhookRecord(request_id="req-1", status=status, received_at=time.time(), error=error)
        self.values[record_key("req-1")] = record.to_json()

    async def read(self, key: str) -> str | None:
        self.reads += 1
        return self.values.get(key)


@pytest.fixture
def variables() -> Any:
    store = Variables()
    with patch("fal_provider.webhooks.waiting._read_variable", store.read):
        yield store


def task_context() -> Any:
    """``context["ti"]`` with dag_id d, run_id r, task_id t (typed loosely: it is a test double)."""
    return make_context()


def webhook_trigger(**kwargs: Any) -> FalRequestTrigger:
    kwargs.setdefault("backstop_interval", 0.01)
    return FalRequestTrigger(request=REF, wait_mode="webhook", **kwargs)


# ----------------------------------------------------------------------------- trigger


def test_serialize_keeps_mode_and_backstop() -> None:
    trig = webhook_trigger(backstop_interval=300, end_time=1_900_000_000.0)
    classpath, kwargs = trig.serialize()
    assert kwargs["wait_mode"] == "webhook" and kwargs["backstop_interval"] == 300.0
    assert FalRequestTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_default_backstop_is_slow_and_bad_values_are_refused() -> None:
    assert FalRequestTrigger(request=REF, wait_mode="webhook").policy.backstop_interval == 120.0
    for bad in (0, -1, "soon", True):
        with pytest.raises(ValueError, match="backstop_interval"):
            webhook_trigger(backstop_interval=bad)


async def test_callback_recorded_before_start_fires_without_asking_fal(variables: Variables) -> None:
    variables.record()
    hook = async_hook()
    event = await first_event(webhook_trigger(backstop_interval=300), hook)
    assert event == {"status": "success", "request": REF, "source": "webhook"}
    hook.aget_status.assert_not_awaited()
    assert variables.reads == 1


async def test_failed_callback_becomes_a_failed_event(variables: Variables) -> None:
    variables.record(status="ERROR", error="CUDA out of memory")
    event = await first_event(webhook_trigger(), async_hook())
    assert event["status"] == "failed" and event["source"] == "webhook"
    assert event["error"] == "CUDA out of memory" and event["error_type"] == "webhook_error"


async def test_callback_arriving_while_waiting_is_found_at_the_next_check(variables: Variables) -> None:
    hook = async_hook([queued(), running()])

    async def status_then_record(*args: Any, **kwargs: Any) -> Any:
        if hook.aget_status.await_count == 2:
            variables.record()
        return running()

    hook.aget_status.side_effect = status_then_record
    event = await first_event(webhook_trigger(), hook)
    assert event["source"] == "webhook"
    assert hook.aget_status.await_count == 2


async def test_lost_callback_is_recovered_by_the_backstop(variables: Variables) -> None:
    hook = async_hook([queued(), running(), done()])
    event = await first_event(webhook_trigger(), hook)
    assert event == {"status": "success", "request": REF, "source": "backstop"}
    assert hook.aget_status.await_count == 3
    assert variables.reads == 4, "the record is read on start and before every status check"


async def test_backstop_keeps_fal_errors_of_a_failed_request(variables: Variables) -> None:
    hook = async_hook([done(error="Runner disconnected", error_type="runner_disconnected")])
    event = await first_event(webhook_trigger(), hook)
    assert event["status"] == "failed" and event["error_type"] == "runner_disconnected"


async def test_backstop_tolerates_transient_errors_up_to_the_limit(variables: Variables) -> None:
    hook = async_hook([FalServerError("503"), FalServerError("503"), done()])
    event = await first_event(webhook_trigger(max_consecutive_errors=2), hook)
    assert event["status"] == "success"

    hook = async_hook([FalServerError("503")] * 3)
    event = await first_event(webhook_trigger(max_consecutive_errors=2), hook)
    assert event["status"] == "error" and event["error_class"] == "FalServerError"


async def test_backstop_stops_on_a_permanent_error(variables: Variables) -> None:
    event = await first_event(webhook_trigger(), async_hook([FalAuthError("bad key")]))
    assert event["status"] == "error" and event["retryable"] is False


async def test_deadline_yields_timeout(variables: Variables) -> None:
    hook = async_hook([queued()] * 1000)
    trig = webhook_trigger(backstop_interval=0.05, end_time=time.time() + 0.2)
    event = await first_event(trig, hook)
    assert event["status"] == "timeout"
    assert hook.aget_status.await_count <= 5


async def test_on_kill_after_a_recorded_callback_does_not_cancel(variables: Variables) -> None:
    variables.record()
    hook = async_hook()
    await install_hook(webhook_trigger(), hook).on_kill()
    hook.acancel.assert_not_awaited()


async def test_on_kill_without_a_callback_cancels_once(variables: Variables) -> None:
    hook = async_hook()
    trig = install_hook(webhook_trigger(), hook)
    await trig.on_kill()
    await trig.on_kill()
    hook.acancel.assert_awaited_once()


async def test_poll_mode_on_kill_reads_no_record(variables: Variables) -> None:
    hook = async_hook()
    await install_hook(FalRequestTrigger(request=REF), hook).on_kill()
    hook.acancel.assert_awaited_once()
    assert variables.reads == 0


# ----------------------------------------------------------------------------- operators


def webhook_hook(statuses: list[Any] | None = None, base_url: str | None = BASE_URL) -> MagicMock:
    hook = make_hook(statuses or [queued()])
    hook.settings.webhook_base_url = base_url
    return hook


def inference(hook: MagicMock, **kwargs: Any) -> FalInferenceOperator:
    op = FalInferenceOperator(task_id="t", app_id=APP, arguments={"prompt": "a cat"}, **kwargs)
    install_hook(op, hook)
    return op


def callback_query(url: str) -> dict[str, list[str]]:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{BASE_URL}/fal/webhook"
    return parse_qs(parts.query)


def test_inference_submits_with_the_task_callback_and_defers_in_webhook_mode() -> None:
    hook = webhook_hook()
    op = inference(hook, wait_mode="webhook", backstop_interval=300)
    assert op.deferrable is True, "webhook mode defers even when default_deferrable is off"
    with pytest.raises(TaskDeferred) as exc:
        op.execute(task_context())
    url = hook.submit.call_args.kwargs["webhook_url"]
    assert callback_query(url) == {"dag_id": ["d"], "run_id": ["r"], "task_id": ["t"]}
    trig = exc.value.trigger
    assert isinstance(trig, FalRequestTrigger)
    assert trig.policy.wait_mode == "webhook" and trig.policy.backstop_interval == 300.0


def test_mapped_task_callback_names_its_map_index() -> None:
    hook = webhook_hook()
    context = task_context()
    context["ti"].map_index = 3
    with pytest.raises(TaskDeferred):
        inference(hook, wait_mode="webhook").execute(context)
    assert callback_query(hook.submit.call_args.kwargs["webhook_url"])["map_index"] == ["3"]


def test_missing_base_url_fails_before_paying_for_a_request() -> None:
    hook = webhook_hook(base_url=None)
    with pytest.raises(WebhookUrlError, match="webhook_base_url"):
        inference(hook, wait_mode="webhook").execute(task_context())
    hook.submit.assert_not_called()


def test_other_modes_submit_without_a_callback() -> None:
    hook = webhook_hook()
    with pytest.raises(TaskDeferred):
        inference(hook, wait_mode="poll", deferrable=True).execute(task_context())
    assert "webhook_url" not in hook.submit.call_args.kwargs


def test_webhook_mode_refuses_to_block_a_worker() -> None:
    with pytest.raises(ValueError, match="needs deferrable=True"):
        FalInferenceOperator(task_id="t", app_id=APP, wait_mode="webhook", deferrable=False)
    with pytest.raises(ValueError, match="needs deferrable=True"):
        FalRequestSensor(task_id="s", request=REF, wait_mode="webhook", deferrable=False)


def test_resume_on_a_webhook_event_fetches_the_result_once() -> None:
    hook = webhook_hook()
    op = inference(hook, wait_mode="webhook")
    event = {"status": "success", "request": REF, "source": "webhook"}
    assert op.execute_complete(task_context(), event) == {"images": [{"url": "http://x/a.png"}]}
    hook.get_result.assert_called_once()
    hook.get_status.assert_not_called()


def test_resume_on_a_failed_webhook_event_raises_fal_classified_error() -> None:
    hook = webhook_hook()
    hook.get_result.side_effect = FalValidationError("prompt is required", error_type="validation")
    op = inference(hook, wait_mode="webhook")
    event = {
        "status": "failed",
        "request": REF,
        "source": "webhook",
        "error": "Unprocessable",
        "error_type": "webhook_error",
    }
    with pytest.raises(FalValidationError, match="prompt is required"):
        op.execute_complete(task_context(), event)


def test_submit_operator_can_point_the_callback_at_a_sensor() -> None:
    hook = webhook_hook()
    op = FalSubmitOperator(task_id="submit", app_id=APP, webhook_wake_task_id="wait")
    install_hook(op, hook)
    op.execute(task_context())
    assert callback_query(hook.submit.call_args.kwargs["webhook_url"])["task_id"] == ["wait"]

    plain = FalSubmitOperator(task_id="submit", app_id=APP)
    install_hook(plain, hook)
    plain.execute(task_context())
    assert "webhook_url" not in hook.submit.call_args.kwargs


def test_sensor_defers_on_a_webhook_trigger() -> None:
    hook = webhook_hook([running()])
    op = FalRequestSensor(task_id="wait", request=REF, wait_mode="webhook", backstop_interval=60, timeout=600)
    install_hook(op, hook)
    with pytest.raises(TaskDeferred) as exc:
        op.execute(task_context())
    trig = exc.value.trigger
    assert isinstance(trig, FalRequestTrigger)
    assert trig.policy.wait_mode == "webhook" and trig.policy.backstop_interval == 60.0
    event = {"status": "success", "request": REF, "source": "webhook"}
    assert op.execute_complete(task_context(), event) == REF
