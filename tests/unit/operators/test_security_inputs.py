"""Bad input fails before anything is paid, and fails without spending retries.

Parse time: a parameter whose value is known when the DAG is parsed is checked in ``__init__``, so
the DAG shows an import error instead of failing (and maybe paying) later. Run time: a templated
value is checked after rendering, first thing in ``execute()``; the operators run with the real hook
against the emulator, whose counters prove that nothing was submitted, streamed or opened.
Every failure is a ``FalInputError``: a ``ValueError`` and an ``AirflowFailException`` (no retries).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG

from fal_provider._compat import AirflowFailException
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalInputError
from fal_provider.operators.fal import (
    FalCancelOperator,
    FalInferenceOperator,
    FalResultOperator,
    FalSubmitOperator,
)
from fal_provider.operators.realtime import FalRealtimeOperator
from fal_provider.operators.streaming import FalStreamOperator
from tests.unit.operators.fakes import make_context, make_ref

ECHO = "emulator/echo"
REF = make_ref(app_id=ECHO).to_xcom()


def permanent(err: BaseException) -> bool:
    return (
        isinstance(err, FalInputError)
        and isinstance(err, ValueError)
        and isinstance(err, AirflowFailException)
    )


# ----------------------------------------------------------------------------- parse time

#: (operator, keyword arguments, text the error must contain)
PARSE_TIME_CASES: list[tuple[type, dict[str, Any], str]] = [
    # select: syntax, and the dotted spelling of Python-style indexing
    (FalInferenceOperator, {"select": "images[0].url"}, "write 'images.0.url'"),
    (FalInferenceOperator, {"select": "data['items'][2]"}, "write 'data.items.2'"),
    (FalInferenceOperator, {"select": "images..url"}, "empty segment"),
    (FalInferenceOperator, {"select": ["seed", ""]}, "non-empty strings"),
    (FalInferenceOperator, {"select": "['seed', 'images']"}, "render_template_as_native_obj"),
    (FalResultOperator, {"select": "images[0]"}, "write 'images.0'"),
    (FalStreamOperator, {"select": "output[0]"}, "write 'output.0'"),
    (FalRealtimeOperator, {"select": "echo[1]"}, "write 'echo.1'"),
    # output_path: a scheme Airflow's object storage knows
    (FalInferenceOperator, {"output_path": "nosuch://bucket/prefix/"}, "nosuch"),
    (FalResultOperator, {"output_path": 42}, "output_path must be a URI"),
    (FalStreamOperator, {"output_path": "nosuch://b/"}, "nosuch"),
    (FalRealtimeOperator, {"output_path": "nosuch://b/"}, "nosuch"),
    (FalInferenceOperator, {"download_media": True}, "download_media=True needs output_path"),
    (FalStreamOperator, {"download_media": True}, "download_media=True needs output_path"),
    # max_xcom_bytes, max_consecutive_errors
    (FalInferenceOperator, {"max_xcom_bytes": -1}, "max_xcom_bytes must be an integer >= 0"),
    (FalInferenceOperator, {"max_xcom_bytes": "256k"}, "max_xcom_bytes must be an integer"),
    (FalStreamOperator, {"max_xcom_bytes": 1.5}, "max_xcom_bytes must be an integer"),
    (FalRealtimeOperator, {"max_xcom_bytes": -5}, "max_xcom_bytes must be an integer >= 0"),
    (FalInferenceOperator, {"max_consecutive_errors": -1}, "max_consecutive_errors must be an integer >= 0"),
    (FalResultOperator, {"max_consecutive_errors": "5"}, "max_consecutive_errors must be an integer"),
    # intervals
    (FalInferenceOperator, {"poll_interval": 0}, "poll_interval must be a positive number"),
    (FalInferenceOperator, {"poll_interval": "1"}, "poll_interval must be a number"),
    (FalInferenceOperator, {"max_poll_interval": 0.5, "poll_interval": 1}, "must be >= poll_interval"),
    (FalInferenceOperator, {"timeout": -3}, "timeout must be a positive number"),
    (FalInferenceOperator, {"backstop_interval": 0}, "backstop_interval must be a positive"),
    (FalStreamOperator, {"log_interval": -1}, "log_interval must be a number >= 0"),
    (FalRealtimeOperator, {"token_expiration": 0}, "token_expiration must be a positive integer"),
    # headers: valid names, single-line values
    (FalInferenceOperator, {"headers": {"X-Bad Name": "v"}}, "not a valid HTTP header name"),
    (FalSubmitOperator, {"headers": {"X-Trace": "a\r\nX-Injected: 1"}}, "a line break (CR/LF)"),
    (FalResultOperator, {"headers": {"X-Trace": None}}, "must be a string"),
    (FalCancelOperator, {"headers": "X-Trace: 1"}, "headers must be a dict"),
    (FalStreamOperator, {"headers": {"X-Trace": "a\nb"}}, "a line break (CR/LF)"),
    # arguments, app id, options
    (FalInferenceOperator, {"arguments": "prompt=a cat"}, "arguments must be a dict"),
    (FalSubmitOperator, {"arguments": ["a cat"]}, "arguments must be a dict"),
    (FalSubmitOperator, {"app_id": "flux"}, "Invalid fal app id"),
    (FalStreamOperator, {"arguments": ["a cat"]}, "must render to a mapping"),
    (FalRealtimeOperator, {"inputs": {"prompt": "a cat"}}, "must be a list of input mappings"),
    (FalSubmitOperator, {"options": "priority=low"}, "options must be a dict"),
    (FalSubmitOperator, {"priority": "urgent"}, "priority"),
    (FalInferenceOperator, {"wait_mode": "push"}, "Unknown wait_mode"),
]

#: Booleans are not numbers: ``True`` is never read as 1 second, 1 byte or 1 error.
BOOL_CASES: list[tuple[type, dict[str, Any], str]] = [
    (FalSubmitOperator, {"start_timeout": True}, "start_timeout must be a number"),
    (FalInferenceOperator, {"options": {"start_timeout": True}}, "start_timeout must be a number"),
    (FalSubmitOperator, {"max_queue_length": True}, "max_queue_length must be a number"),
    (FalSubmitOperator, {"priority": True}, "priority"),
    (FalSubmitOperator, {"object_lifecycle": False}, "object_lifecycle must be a number"),
    (FalInferenceOperator, {"poll_interval": True}, "poll_interval must be a number"),
    (FalInferenceOperator, {"max_poll_interval": True}, "max_poll_interval must be a number"),
    (FalInferenceOperator, {"timeout": True}, "timeout must be a number"),
    (FalResultOperator, {"backstop_interval": True}, "backstop_interval must be a number"),
    (FalInferenceOperator, {"max_xcom_bytes": False}, "max_xcom_bytes must be an integer"),
    (FalInferenceOperator, {"max_consecutive_errors": True}, "max_consecutive_errors must be an integer"),
    (FalStreamOperator, {"timeout": True}, "timeout must be a number"),
    (FalStreamOperator, {"idle_timeout": True}, "idle_timeout must be a number"),
    (FalRealtimeOperator, {"max_in_flight": True}, "max_in_flight must be an integer"),
    (FalRealtimeOperator, {"message_timeout": True}, "message_timeout must be a number"),
    (FalRealtimeOperator, {"max_reconnects": False}, "max_reconnects must be an integer"),
    (FalRealtimeOperator, {"token_expiration": True}, "token_expiration must be an integer"),
]


def build(cls: type, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"task_id": "t"}
    if cls in (FalInferenceOperator, FalSubmitOperator, FalStreamOperator):
        params.update(app_id=ECHO, arguments={"prompt": "a cat"})
    elif cls is FalRealtimeOperator:
        params.update(app_id=ECHO, inputs=[{"prompt": "a cat"}])
    else:
        params.update(request=REF)
    params.update(kwargs)
    return cls(**params)


@pytest.mark.parametrize(("cls", "kwargs", "message"), PARSE_TIME_CASES + BOOL_CASES)
def test_known_bad_parameter_fails_when_the_dag_is_parsed(
    cls: type, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(FalInputError) as info:
        build(cls, **kwargs)
    assert message in str(info.value)
    assert permanent(info.value)


def test_header_errors_never_show_the_value() -> None:
    secret = "Bearer sk-live-0123456789"
    with pytest.raises(FalInputError) as info:
        build(FalInferenceOperator, headers={"Authorization-Extra": f"{secret}\r\n"})
    assert "sk-live" not in str(info.value) and "Authorization-Extra" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"select": "images.0.url"},
        {"select": ["seed", "images.0.url"]},
        {"output_path": "file:///tmp/fal/"},
        {"output_path": "/tmp/fal/result.json", "download_media": True},
        {"max_xcom_bytes": 0},
        {"max_xcom_bytes": None},
        {"timeout": 30, "poll_interval": 0.5, "max_poll_interval": 10, "max_consecutive_errors": 0},
        {"headers": {"X-Team": "ml", "X-Attempt": 2}},
        {"start_timeout": 5, "max_queue_length": 0, "object_lifecycle": "1d"},
        {"arguments": '{"prompt": "a cat"}'},
    ],
)
def test_good_parameters_are_accepted(kwargs: dict[str, Any]) -> None:
    build(FalInferenceOperator, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"select": "{{ params.select }}"},
        {"output_path": "{{ params.bucket }}/out/"},
        {"headers": {"X-Trace": "{{ run_id }}"}},
        {"arguments": "{{ params.arguments }}"},
        {"options": "{{ params.options }}"},
        {"app_id": "{{ params.app }}"},
    ],
)
def test_templated_values_are_left_for_run_time(kwargs: dict[str, Any]) -> None:
    build(FalInferenceOperator, **kwargs)


def test_partial_expand_still_parses_and_checks_the_mapped_values_at_run_time() -> None:
    with DAG("expand_checks", schedule=None):
        good = FalInferenceOperator.partial(task_id="good", app_id=ECHO).expand(
            arguments=[{"prompt": "a"}, {"prompt": "b"}]
        )
        bad = FalInferenceOperator.partial(task_id="bad", app_id=ECHO, select="images[0].url").expand(
            arguments=[{"prompt": "a"}]
        )
    assert good.unmap({"arguments": {"prompt": "a"}, **good.partial_kwargs}).arguments == {"prompt": "a"}
    with pytest.raises(FalInputError, match=r"write 'images\.0\.url'") as info:
        bad.unmap({"arguments": {"prompt": "a"}, **bad.partial_kwargs})  # what the worker does
    assert permanent(info.value)


# ----------------------------------------------------------------------------- run time, real HTTP


def rendered(op: Any, **params: Any) -> Any:
    """Render the operator's templates as the task runner does (native objects, like the DAG says)."""
    op.render_template_fields({"params": params, "run_id": "manual__1"})
    return op


def native_dag() -> DAG:
    return DAG("render_checks", schedule=None, render_template_as_native_obj=True)


def assert_nothing_paid(emu: FalEmulator) -> None:
    stats = emu.stats()
    assert stats["submits_total"] == 0, stats["submits"]
    assert stats["stream_calls"] == 0 and stats["realtime_sessions"] == 0 and stats["tokens"] == 0
    assert stats["runs"] == 0 and stats["result_calls"] == 0


def execute_fails(op: Any, match: str) -> FalInputError:
    with pytest.raises(FalInputError) as info:
        op.execute(make_context())
    assert match in str(info.value), str(info.value)
    assert permanent(info.value)
    return info.value


@pytest.mark.parametrize(
    ("kwargs", "params", "message"),
    [
        ({"select": "{{ params.s }}"}, {"s": "images[0].url"}, "write 'images.0.url'"),
        ({"select": "{{ params.s }}"}, {"s": ["seed", "a..b"]}, "empty segment"),
        ({"output_path": "{{ params.p }}"}, {"p": "nosuch://bucket/x/"}, "nosuch"),
        ({"headers": {"X-Trace": "{{ params.v }}"}}, {"v": "a\r\nX-Injected: 1"}, "line break"),
        ({"headers": "{{ params.h }}"}, {"h": ["X-Trace"]}, "headers must be a dict"),
        ({"arguments": "{{ params.a }}"}, {"a": ["a cat"]}, "arguments must be a dict"),
        ({"arguments": {"when": "{{ params.a }}"}}, {"a": {1, 2}}, "not JSON-serialisable"),
        ({"arguments": {"x": "{{ params.a }}"}}, {"a": float("nan")}, "not a finite number"),
        ({"app_id": "{{ params.app }}"}, {"app": "noslash"}, "Invalid fal app id"),
        ({"options": "{{ params.o }}"}, {"o": {"start_timeout": True}}, "start_timeout must be a number"),
        ({"options": "{{ params.o }}"}, {"o": {"priority": "urgent"}}, "priority"),
        ({"options": "{{ params.o }}"}, {"o": "low"}, "options must render to a dict"),
        ({"start_timeout": "{{ params.t }}"}, {"t": -1}, "start_timeout"),
    ],
)
def test_rendered_bad_value_fails_before_the_submit(
    fal_emulator_conn: FalEmulator, kwargs: dict[str, Any], params: dict[str, Any], message: str
) -> None:
    with native_dag():
        op = build(FalInferenceOperator, **kwargs)
    execute_fails(rendered(op, **params), message)
    assert_nothing_paid(fal_emulator_conn)


def test_rendered_bad_value_fails_before_a_submit_operator_posts(fal_emulator_conn: FalEmulator) -> None:
    with native_dag():
        op = build(FalSubmitOperator, arguments={"seed": "{{ params.seed }}"})
    execute_fails(rendered(op, seed=float("inf")), "not a finite number")
    assert_nothing_paid(fal_emulator_conn)


def test_unwritable_output_folder_fails_before_the_submit(
    fal_emulator_conn: FalEmulator, tmp_path: Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with native_dag():
        op = build(FalInferenceOperator, output_path="{{ params.out }}")
    execute_fails(rendered(op, out=f"file://{blocker}/results/"), "Cannot write")
    assert_nothing_paid(fal_emulator_conn)
    assert blocker.read_text() == "not a folder"


def test_write_probe_leaves_the_location_as_it_found_it(tmp_path: Path) -> None:
    from fal_provider.results import probe_output_path

    probe_output_path(f"file://{tmp_path}/new/nested/", None)
    probe_output_path(str(tmp_path / "run.json"), None)
    assert list(tmp_path.iterdir()) == []


def test_webhook_mode_without_a_base_url_fails_before_the_submit(fal_emulator_conn: FalEmulator) -> None:
    op = build(FalInferenceOperator, wait_mode="webhook")
    execute_fails(op, "webhook_base_url")
    assert_nothing_paid(fal_emulator_conn)


def test_bad_request_reference_is_permanent(fal_emulator_conn: FalEmulator) -> None:
    with native_dag():
        result = build(FalResultOperator, request="{{ params.r }}")
        cancel = build(FalCancelOperator, task_id="cancel", request="{{ params.r }}")
    execute_fails(rendered(result, r={"app_id": ECHO}), "request_id")
    execute_fails(rendered(cancel, r="not a reference"), "request reference")
    assert fal_emulator_conn.stats()["cancels"] == 0


def test_result_operator_checks_rendered_select_before_waiting(fal_emulator_conn: FalEmulator) -> None:
    with native_dag():
        op = build(FalResultOperator, select="{{ params.s }}")
    execute_fails(rendered(op, s="images[0].url"), "write 'images.0.url'")
    assert fal_emulator_conn.stats()["status_calls"]["total"] == 0


@pytest.mark.parametrize(
    ("kwargs", "params", "message"),
    [
        ({"arguments": "{{ params.a }}"}, {"a": ["a cat"]}, "must render to a mapping"),
        ({"arguments": {"seed": "{{ params.a }}"}}, {"a": float("nan")}, "not a finite number"),
        ({"headers": {"X-Trace": "{{ params.v }}"}}, {"v": "a\nb"}, "line break"),
        ({"app_id": "{{ params.app }}"}, {"app": "noslash"}, "Invalid fal app id"),
    ],
)
def test_stream_operator_checks_rendered_values_before_streaming(
    fal_emulator_conn: FalEmulator, kwargs: dict[str, Any], params: dict[str, Any], message: str
) -> None:
    with native_dag():
        op = build(FalStreamOperator, **{"app_id": "emulator/stream", **kwargs})
    execute_fails(rendered(op, **params), message)
    assert_nothing_paid(fal_emulator_conn)


def test_stream_operator_probes_output_path_before_streaming(
    fal_emulator_conn: FalEmulator, tmp_path: Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    op = build(FalStreamOperator, app_id="emulator/stream", output_path=f"{blocker}/out/")
    execute_fails(op, "Cannot write")
    assert_nothing_paid(fal_emulator_conn)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("{{ params.rows }}", "must be a list of input mappings"),
        ([{"when": "{{ params.bad }}"}], "cannot be msgpack-encoded"),
        ([{"ok": 1}, "{{ params.text }}"], "must be a mapping"),
    ],
)
def test_realtime_operator_checks_rendered_inputs_before_any_token(
    fal_emulator_conn: FalEmulator, inputs: Any, message: str
) -> None:
    with native_dag():
        op = build(FalRealtimeOperator, inputs=inputs)
    execute_fails(rendered(op, rows={"a": 1}, bad={1, 2}, text="plain"), message)
    assert_nothing_paid(fal_emulator_conn)
