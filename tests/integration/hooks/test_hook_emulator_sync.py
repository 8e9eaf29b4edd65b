"""Every sync FalHook method over real HTTP/WebSocket against the in-process fal emulator."""

from __future__ import annotations

import time

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import (
    FalAuthError,
    FalNotFoundError,
    FalPermanentError,
    FalRateLimitError,
    FalServerError,
    FalStreamError,
    FalValidationError,
)
from fal_provider.hooks.fal import FalHook, FalRealtimeError
from fal_provider.models import CompletedStatus, RequestOptions


def wait_completed(hook: FalHook, ref: object, timeout: float = 30.0) -> CompletedStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_status(ref, logs=True)  # type: ignore[arg-type]
        if isinstance(status, CompletedStatus):
            return status
        time.sleep(0.05)
    raise AssertionError("request did not complete in time")


def test_submit_poll_result_with_options_and_webhook(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    options = RequestOptions(priority="low", runner_hint="r-1", start_timeout=30, store_io=False)
    ref = hook.submit(
        "emulator/echo",
        {"prompt": "cat", "duration_s": 0.2, "log_lines": 2},
        options=options,
        headers={"X-Team": "ml"},
        webhook_url="http://127.0.0.1:9/hook",
    )
    assert ref.request_id and ref.status_url and ref.response_url and ref.cancel_url
    done = wait_completed(hook, ref)
    assert not done.failed
    assert "inference_time" in done.metrics
    assert hook.get_result(ref) == {"prompt": "cat", "duration_s": 0.2, "log_lines": 2}
    info = fal_emulator_conn.request_info(ref.request_id)
    assert info["options"]["queue_priority"] == "low"
    assert info["options"]["runner_hint"] == "r-1"
    assert info["options"]["store_io"] == "0"
    assert info["webhook_url"] == "http://127.0.0.1:9/hook"
    assert {k.lower(): v for k, v in info["headers"].items()}["x-team"] == "ml"


def test_logs_reach_the_status(hook: FalHook) -> None:
    ref = hook.submit("emulator/echo", {"duration_s": 0.5, "log_lines": 3})
    messages: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = hook.get_status(ref, logs=True)
        messages += [entry.message for entry in status.logs or []]
        if isinstance(status, CompletedStatus):
            break
        time.sleep(0.05)
    assert messages, "log lines requested with logs=True must appear in some status"


def test_status_stream_until_completed(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    ref = hook.submit("emulator/echo", {"duration_s": 0.3})
    statuses = list(hook.iter_status(ref, logs=True))
    assert statuses[-1].status == "COMPLETED"
    assert {s.status for s in statuses} <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert fal_emulator_conn.stats()["status_stream_calls"] == 1


def test_request_ref_from_id_reaches_the_same_request(hook: FalHook) -> None:
    ref = hook.submit("emulator/echo/some/sub-path", {"a": 1})
    rebuilt = hook.request_ref("emulator/echo/some/sub-path", ref.request_id)
    wait_completed(hook, rebuilt)
    assert hook.get_result(rebuilt)["a"] == 1


def test_cancel_outcomes(hook: FalHook) -> None:
    ref = hook.submit("emulator/echo", {"duration_s": 20})
    assert hook.cancel(ref) == "CANCELLATION_REQUESTED"
    done = wait_completed(hook, ref)
    assert done.error_type == "client_cancelled"
    assert hook.cancel(ref) == "ALREADY_COMPLETED"
    assert hook.cancel(hook.request_ref("emulator/echo", "no-such-request")) == "NOT_FOUND"


def test_failed_requests_raise_the_mapped_error(hook: FalHook) -> None:
    invalid = hook.submit("emulator/fail", {"kind": "validation"})
    wait_completed(hook, invalid)
    with pytest.raises(FalValidationError) as info:
        hook.get_result(invalid)
    assert isinstance(info.value.detail, list) and info.value.detail[0]["loc"][-1] == "prompt"

    runner = hook.submit("emulator/fail", {"kind": "runner"})
    status = wait_completed(hook, runner)
    assert status.failed and status.error_type == "runner_disconnected"
    with pytest.raises(FalServerError) as info2:
        hook.get_result(runner)
    assert info2.value.retryable and info2.value.error_type == "runner_disconnected"


def test_unknown_app_is_not_found(hook: FalHook) -> None:
    with pytest.raises(FalNotFoundError):
        hook.submit("nobody/does-not-exist", {})


def test_max_queue_length_is_a_rate_limit(fal_emulator_conn: FalEmulator) -> None:
    fal_emulator_conn.configure(concurrency=1)
    hook = FalHook(retry_limit=1)
    hook.submit("emulator/echo", {"duration_s": 5})
    hook.submit("emulator/echo", {"duration_s": 5})
    with pytest.raises(FalRateLimitError):
        hook.submit("emulator/echo", {}, options={"max_queue_length": 1})


def test_run_and_run_errors(hook: FalHook) -> None:
    assert hook.run("emulator/echo", {"x": [1, 2]}) == {"x": [1, 2]}
    with pytest.raises(FalValidationError):
        hook.run("emulator/fail", {"kind": "validation"})


def test_stream_events_and_broken_streams(hook: FalHook) -> None:
    events = list(hook.stream("emulator/stream", {"count": 3}))
    assert [e.get("progress") for e in events[:3]] == [1, 2, 3]
    assert events[-1]["done"] is True
    with pytest.raises(FalStreamError):
        list(hook.stream("emulator/stream", {"count": 5, "break_after": 2}))
    with pytest.raises(FalPermanentError):
        list(hook.stream("emulator/echo", {}))


def test_realtime_session_echo_and_errors(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    with hook.realtime("emulator/realtime") as session:
        for i in range(3):
            session.send({"i": i, "blob": b"\x00\x01"})
            assert session.recv(timeout=10) == {"i": i, "blob": b"\x00\x01"}
        session.send({"x_fal_error": "INTERNAL_ERROR"})
        with pytest.raises(FalRealtimeError) as info:
            session.recv(timeout=10)
        assert info.value.error == "INTERNAL_ERROR"
    assert fal_emulator_conn.stats()["realtime_messages"] >= 3


def test_realtime_app_without_endpoint_names_the_app(hook: FalHook) -> None:
    """The hook types fal's NOT_FOUND frame: a permanent error, not a broken stream to retry."""
    with (
        pytest.raises(FalNotFoundError, match=r"fal-ai/flux/schnell.*no realtime endpoint"),
        hook.realtime("fal-ai/flux/schnell") as rt,
    ):
        rt.send({"prompt": "x"})
        rt.recv(timeout=10)


def test_upload_bytes_and_file(hook: FalHook, tmp_path) -> None:
    url = hook.upload(b"hello fal", file_name="hello.txt")
    picture = tmp_path / "pic.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    url2 = hook.upload(picture)
    with httpx.Client(timeout=30) as client:
        assert client.get(url).content == b"hello fal"
        fetched = client.get(url2)
    assert fetched.content == picture.read_bytes()
    assert fetched.headers["content-type"].startswith("image/png")


def test_test_connection(
    hook: FalHook, fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hook.test_connection()[0] is True
    bad = fal_emulator_conn.connection_json().replace(fal_emulator_conn.key or "", "wrong-id:wrong-secret")
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", bad)
    ok, message = FalHook().test_connection()
    assert ok is False and "wrong-secret" not in message


def test_wrong_key_is_an_auth_error_without_the_key(fal_emulator_conn: FalEmulator, monkeypatch) -> None:
    bad = fal_emulator_conn.connection_json().replace(fal_emulator_conn.key or "", "wrong-id:wrong-secret")
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", bad)
    with pytest.raises(FalAuthError) as info:
        FalHook().submit("emulator/echo", {})
    assert "wrong-secret" not in str(info.value) and info.value.http_status == 401
