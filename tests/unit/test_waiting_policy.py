"""The wait policy and the events: one value object for every waiter, one shape for every event."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from fal_provider._compat import AirflowException, TaskDeferred
from fal_provider.exceptions import FalAuthError, FalInputError, FalServerError
from fal_provider.models import parse_status
from fal_provider.operators.fal import FalResultOperator
from fal_provider.sensors.fal import FalRequestSensor
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.waiting import (
    ErrorTolerance,
    WaitPolicy,
    backstop_event,
    completed_event,
    error_event,
    timeout_event,
    validate_event,
    webhook_event,
)
from tests.unit.operators.fakes import install_hook, make_context, make_hook, make_ref, queued

REF = make_ref()

#: Exactly what ``FalRequestTrigger.serialize()`` stored before the wait policy existed.
PREVIOUS_VERSION_KWARGS: dict[str, Any] = {
    "request": REF.to_xcom(),
    "fal_conn_id": "fal_default",
    "wait_mode": "webhook",
    "poll_interval": 2.0,
    "max_poll_interval": 20.0,
    "end_time": 1_900_000_000.0,
    "max_consecutive_errors": 4,
    "cancel_on_kill": False,
    "log_fal_logs": True,
    "backstop_interval": 90.0,
}


def test_a_trigger_stored_by_the_previous_version_loads_and_serializes_the_same() -> None:
    trig = FalRequestTrigger(**PREVIOUS_VERSION_KWARGS)
    assert trig.policy == WaitPolicy(
        wait_mode="webhook",
        poll_interval=2.0,
        max_poll_interval=20.0,
        max_consecutive_errors=4,
        log_fal_logs=True,
        backstop_interval=90.0,
        end_time=1_900_000_000.0,
    )
    assert trig.serialize() == ("fal_provider.triggers.fal.FalRequestTrigger", PREVIOUS_VERSION_KWARGS)


def test_policy_is_frozen_and_numbers_have_one_type() -> None:
    policy = WaitPolicy(poll_interval=2, max_poll_interval=5, backstop_interval=60)
    assert (policy.poll_interval, policy.max_poll_interval, policy.backstop_interval) == (2.0, 5.0, 60.0)
    assert all(isinstance(v, float) for v in (policy.poll_interval, policy.max_poll_interval))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.poll_interval = 3.0  # type: ignore[misc]
    assert policy.until(123.0).end_time == 123.0 and policy.end_time is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait_mode": "sse"}, "Unknown wait_mode"),
        ({"poll_interval": 0}, "poll_interval must be a positive number"),
        ({"poll_interval": 5, "max_poll_interval": 1}, r"max_poll_interval \(1\) must be >="),
        ({"max_consecutive_errors": -1}, "max_consecutive_errors must be an integer >= 0"),
        ({"backstop_interval": True}, "backstop_interval must be a number"),
    ],
)
def test_policy_refuses_bad_values_as_input_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FalInputError, match=message):
        WaitPolicy(**kwargs)


def _deferred_kwargs(task: Any) -> dict[str, Any]:
    with pytest.raises(TaskDeferred) as exc:
        task.execute(make_context())
    return dict(exc.value.trigger.serialize()[1])


def test_the_sensor_and_the_operators_defer_on_the_same_trigger() -> None:
    common: dict[str, Any] = {
        "request": REF.to_xcom(),
        "deferrable": True,
        "timeout": 300,
        "wait_mode": "stream",
        "max_poll_interval": 12.0,
        "max_consecutive_errors": 2,
        "log_fal_logs": True,
        "backstop_interval": 45.0,
        "cancel_on_kill": False,
    }
    operator = FalResultOperator(task_id="result", poll_interval=3.0, **common)
    install_hook(operator, make_hook([queued()]))
    sensor = FalRequestSensor(task_id="sensor", poke_interval=3.0, **common)
    install_hook(sensor, make_hook([queued()]))
    assert operator.wait_policy == sensor.wait_policy
    from_operator, from_sensor = _deferred_kwargs(operator), _deferred_kwargs(sensor)
    assert abs(from_operator.pop("end_time") - from_sensor.pop("end_time")) < 5
    assert from_operator == from_sensor


def test_error_tolerance_counts_only_consecutive_transient_errors() -> None:
    errors = ErrorTolerance(2)
    assert errors.tolerates(FalServerError("502")) and errors.tolerates(OSError("reset"))
    assert not errors.tolerates(FalServerError("502"))  # the third in a row
    errors.succeeded()
    assert errors.tolerates(FalServerError("502"))
    assert not ErrorTolerance(5).tolerates(FalAuthError("bad key"))  # permanent: never tolerated


def test_every_event_passes_the_one_validation() -> None:
    completed = parse_status({"status": "COMPLETED"})
    failed = parse_status({"status": "COMPLETED", "error": "boom", "error_type": "x"})
    events = [
        completed_event(completed, REF),
        completed_event(failed, REF),
        backstop_event(completed, REF),
        timeout_event(REF, time.time()),
        error_event(REF, FalServerError("down")),
        webhook_event(succeeded=True, error=None, request=REF.to_xcom(), request_id=REF.request_id),
        webhook_event(succeeded=False, error="bad", request=REF.to_xcom(), request_id=REF.request_id),
    ]
    statuses = [validate_event(event)[0] for event in events]
    assert statuses == ["success", "failed", "success", "timeout", "error", "success", "failed"]
    assert backstop_event(completed, REF)["source"] == "backstop"
    with pytest.raises(AirflowException, match="Unexpected fal trigger event status 'cancelled'"):
        validate_event({"status": "cancelled", "request": REF.to_xcom()})
