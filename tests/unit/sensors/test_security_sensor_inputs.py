"""The sensor checks its parameters when the DAG is parsed, as permanent FalInputErrors."""

from __future__ import annotations

from typing import Any

import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.exceptions import FalInputError
from fal_provider.sensors.fal import FalRequestSensor

REF = {"app_id": "emulator/echo", "request_id": "a1b2c3d4-0000-4000-8000-000000000001"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poke_interval": True}, "poll"),
        ({"max_poll_interval": False}, "poll"),
        ({"max_consecutive_errors": True}, "max_consecutive_errors"),
        ({"max_consecutive_errors": -1}, "max_consecutive_errors"),
        ({"headers": {"X-Trace": "a\r\nX-Injected: 1"}}, "line break"),
        ({"headers": {"Bad Name": "v"}}, "not a valid HTTP header name"),
        ({"headers": "X-Trace: 1"}, "headers must be a dict"),
        ({"wait_mode": "telepathy"}, "wait_mode"),
        ({"request": None}, "request="),
    ],
)
def test_bad_sensor_parameters_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"task_id": "wait", "request": REF, **kwargs}
    with pytest.raises(FalInputError, match=message) as info:
        FalRequestSensor(**arguments)
    assert isinstance(info.value, AirflowFailException) and isinstance(info.value, ValueError)


def test_templated_headers_are_left_for_run_time() -> None:
    sensor = FalRequestSensor(task_id="wait", request=REF, headers="{{ params.headers }}")
    assert sensor.headers == "{{ params.headers }}"
