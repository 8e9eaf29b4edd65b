"""FalRequestSensor: poke results, failure classification, deferral, timeout semantics."""

from __future__ import annotations

import time
from typing import Any
from unittest.mock import MagicMock

import pytest
from airflow.sdk.bases.sensor import PokeReturnValue

from fal_provider._compat import AirflowException, AirflowSensorTimeout, TaskDeferred
from fal_provider.exceptions import FalNotFoundError, FalRequestFailed, FalServerError, FalValidationError
from fal_provider.sensors.fal import FalRequestSensor
from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import (
    APP,
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


def sensor(hook: MagicMock, **kwargs: Any) -> FalRequestSensor:
    kwargs.setdefault("request", REF.to_xcom())
    op = FalRequestSensor(task_id="wait", poke_interval=0.01, **kwargs)
    install_hook(op, hook)
    return op


def test_needs_a_request() -> None:
    with pytest.raises(ValueError, match=r"request=\.\.\. or both app_id"):
        FalRequestSensor(task_id="w", app_id=APP)


def test_poke_false_until_completed_then_returns_reference() -> None:
    hook = make_hook([queued(), running(), done()])
    op = sensor(hook)
    context = make_context()
    assert op.poke(context) is False
    assert op.poke(context) is False
    result = op.poke(context)
    assert isinstance(result, PokeReturnValue) and result.is_done
    assert result.xcom_value == REF.to_xcom()
    assert pushed(context) == {"fal_request": REF.to_xcom(), "fal_request_url": REF.status_url}
    assert hook.get_status.call_count == 3


def test_app_and_request_id_build_a_reference() -> None:
    hook = make_hook([done()])
    hook.request_ref.return_value = REF
    op = sensor(hook, request=None, app_id=APP, request_id="req-1")
    assert op.poke(make_context()).xcom_value == REF.to_xcom()
    hook.request_ref.assert_called_once_with(APP, "req-1")


def test_failed_request_fails_with_classified_error() -> None:
    hook = make_hook([done(error="Runner disconnected", error_type="runner_disconnected")])
    hook.get_result.side_effect = FalNotFoundError("expired")
    with pytest.raises(FalRequestFailed, match="Runner disconnected"):
        sensor(hook).poke(make_context())

    hook = make_hook([done(error="bad", error_type=None)])
    hook.get_result.side_effect = FalValidationError("422 prompt missing")
    with pytest.raises(FalValidationError):
        sensor(hook).poke(make_context())


def test_transient_poke_errors_tolerated_up_to_limit() -> None:
    boom = FalServerError("503")
    hook = make_hook([boom, boom, boom])
    op = sensor(hook, max_consecutive_errors=2)
    context = make_context()
    assert op.poke(context) is False
    assert op.poke(context) is False
    with pytest.raises(FalServerError):
        op.poke(context)


def test_deferrable_defers_with_deadline_from_sensor_timeout() -> None:
    hook = make_hook([queued()])
    op = sensor(hook, deferrable=True, timeout=300, wait_mode="stream")
    before = time.time()
    with pytest.raises(TaskDeferred) as exc:
        op.execute(make_context())
    assert isinstance(exc.value.trigger, FalRequestTrigger)
    kwargs = exc.value.trigger.serialize()[1]
    assert kwargs["wait_mode"] == "stream"
    assert before + 300 <= kwargs["end_time"] <= time.time() + 300  # the sensor's timeout is the deadline
    assert exc.value.timeout.total_seconds() > 300


def test_deferrable_already_done_returns_without_deferring() -> None:
    op = sensor(make_hook([done()]), deferrable=True)
    op.defer = MagicMock(side_effect=AssertionError("must not defer"))  # type: ignore[method-assign]
    assert op.execute(make_context()) == REF.to_xcom()


def test_execute_complete_outcomes() -> None:
    hook = make_hook()
    op = sensor(hook, deferrable=True)
    context = make_context()
    assert op.execute_complete(context, {"status": "success", "request": REF.to_xcom()}) == REF.to_xcom()
    with pytest.raises(AirflowSensorTimeout, match="raise timeout="):
        op.execute_complete(context, {"status": "timeout", "request": REF.to_xcom()})
    hook.cancel.assert_not_called()  # the sensor does not own the request by default
    with pytest.raises(AirflowException, match="Unexpected fal trigger event status"):
        op.execute_complete(context, {"status": "weird", "request": REF.to_xcom()})
    with pytest.raises(AirflowException):
        op.execute_complete(context, None)


def test_cancel_on_timeout_opt_in() -> None:
    hook = make_hook()
    op = sensor(hook, deferrable=True, cancel_on_timeout=True)
    with pytest.raises(AirflowSensorTimeout):
        op.execute_complete(make_context(), {"status": "timeout", "request": REF.to_xcom()})
    hook.cancel.assert_called_once()


def test_on_kill_cancels_the_watched_request_quietly_unless_disabled() -> None:
    hook = make_hook([queued()])
    op = sensor(hook)
    op.on_kill()  # no request resolved yet: nothing to cancel
    hook.cancel.assert_not_called()
    op.poke(make_context())
    hook.cancel.side_effect = FalServerError("down")
    op.on_kill()  # logged, not raised
    hook.cancel.assert_called_once_with(REF)
    op.cancel_on_kill = False
    op.on_kill()
    assert hook.cancel.call_count == 1
