"""FalRealtimeOperator's batch logic against scripted in-memory sessions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.exceptions import (
    FalAuthError,
    FalNotFoundError,
    FalRealtimeError,
    FalStreamError,
    FalTimeoutError,
)
from fal_provider.hooks._realtime import frame_error
from fal_provider.hooks._realtime_batch import BatchLedger, check_msgpack_inputs
from fal_provider.hooks.fal import FalHook
from fal_provider.operators.realtime import FalRealtimeOperator, is_session_drop, run_realtime_batch
from tests.unit.operators.fakes import checked_fake, install_hook

APP = "emulator/realtime"


class FakeServer:
    """Echo app over scripted sessions: each session may drop after N answers or send an x-fal-error.

    Answers in order, one per message, like a fal realtime app; records every message it received
    and the most messages ever outstanding, so tests can check the window and the resends.
    """

    def __init__(
        self,
        *,
        drop_after: list[int | None] | None = None,
        error_frame: tuple[int, str] | None = None,
        silent_on: int | None = None,
    ) -> None:
        self.drop_after = list(drop_after or [])
        self.error_frame = error_frame
        self.silent_on = silent_on
        self.sessions = 0
        self.received: list[Any] = []
        self.max_outstanding = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[FakeSession]:
        limit = self.drop_after[self.sessions] if self.sessions < len(self.drop_after) else None
        self.sessions += 1
        session = FakeSession(self, limit)
        try:
            yield session
        finally:
            session.closed = True


class FakeSession:
    def __init__(self, server: FakeServer, limit: int | None) -> None:
        self.server = server
        self.limit = limit
        self.pending: list[Any] = []
        self.answered = 0
        self.closed = False

    async def send(self, message: Any) -> None:
        if self.limit is not None and self.answered >= self.limit:
            raise FalStreamError(f"realtime session with {APP} closed (code 1006)")
        self.server.received.append(message)
        self.pending.append(message)
        self.server.max_outstanding = max(self.server.max_outstanding, len(self.pending))

    async def recv(self, timeout: float | None = None) -> Any:
        await asyncio.sleep(0)
        if self.limit is not None and self.answered >= self.limit:
            raise FalStreamError(f"realtime session with {APP} closed (code 1006)")
        message = self.pending.pop(0)
        if self.server.error_frame and message.get("i") == self.server.error_frame[0]:
            code = self.server.error_frame[1]
            raise frame_error({"type": "x-fal-error", "error": code, "reason": "requested"}, APP)
        if self.server.silent_on is not None and message.get("i") == self.server.silent_on:
            await asyncio.sleep(30)
        self.answered += 1
        return {"echo": message}


def inputs(n: int) -> list[dict[str, Any]]:
    return [{"i": i} for i in range(n)]


# --------------------------------------------------------------------------- ledger


def test_ledger_keeps_a_window_and_matches_outputs_in_order() -> None:
    ledger = BatchLedger(4)
    assert ledger.next_to_send(2) == 0
    ledger.sent(0)
    ledger.sent(1)
    assert ledger.next_to_send(2) is None, "window of 2 is full"
    assert ledger.received("out0") == 0
    assert ledger.next_to_send(2) == 2
    ledger.sent(2)
    assert (ledger.completed, ledger.in_flight, ledger.oldest_in_flight) == (1, 2, 1)


def test_ledger_requeues_lost_inputs_at_the_front_in_order() -> None:
    ledger = BatchLedger(5)
    for i in range(3):
        ledger.sent(i)
    ledger.received("out0")
    assert ledger.session_lost() == 2
    assert [ledger.next_to_send(1)] == [1]
    for expected in (1, 2, 3, 4):
        assert ledger.next_to_send(5) == expected
        ledger.sent(expected)
        assert ledger.received(f"out{expected}") == expected
    assert ledger.done
    assert ledger.results() == ["out0", "out1", "out2", "out3", "out4"]
    assert ledger.resent == 2


def test_ledger_refuses_unsolicited_outputs_and_unfinished_results() -> None:
    ledger = BatchLedger(1)
    with pytest.raises(RuntimeError, match="no input in flight"):
        ledger.received("surprise")
    with pytest.raises(RuntimeError, match="not finished"):
        ledger.results()


# --------------------------------------------------------------------------- input checks


def test_unencodable_input_names_index_location_and_type() -> None:
    bad = [{"ok": 1}, {"prompt": "x", "meta": {"when": dt.datetime(2024, 1, 1)}}]
    with pytest.raises(ValueError) as info:
        check_msgpack_inputs(APP, bad)
    text = str(info.value)
    assert "Realtime input #1 for emulator/realtime cannot be msgpack-encoded" in text
    assert "inputs[1]['meta']['when'] is of type datetime.datetime" in text


def test_non_mapping_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"input #2 for emulator/realtime must be a mapping.*got str"):
        check_msgpack_inputs(APP, [{}, {}, "prompt"])


async def test_bad_input_fails_before_any_session_is_opened() -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="#0"):
        await run_realtime_batch(server.open, [{"x": {1, 2}}], app_id=APP)
    assert server.sessions == 0


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("window", [1, 3, 8])
async def test_outputs_come_back_in_input_order_within_the_window(window: int) -> None:
    server = FakeServer()
    out = await run_realtime_batch(server.open, inputs(20), app_id=APP, max_in_flight=window)
    assert out == [{"echo": {"i": i}} for i in range(20)]
    assert server.max_outstanding == window
    assert server.sessions == 1


@pytest.mark.parametrize("window", [1, 4])
async def test_dropped_session_reconnects_and_resends_only_unanswered_inputs(window: int) -> None:
    server = FakeServer(drop_after=[3, 4])
    out = await run_realtime_batch(
        server.open, inputs(10), app_id=APP, max_in_flight=window, max_reconnects=3, reconnect_delay=0
    )
    assert out == [{"echo": {"i": i}} for i in range(10)], "no input lost, none duplicated"
    assert server.sessions == 3, "one fresh session per drop"
    sent = [m["i"] for m in server.received]
    if window == 1:
        assert sent == list(range(10)), "with one in flight, a drop between answers loses nothing"
    else:
        # the inputs in flight at each drop (3-5, then 7-9) are sent again; answered ones never are
        assert sent == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 7, 8, 9]


async def test_too_many_drops_fail_with_a_retryable_error_saying_how_far_it_got() -> None:
    server = FakeServer(drop_after=[2, 2, 2])
    with pytest.raises(FalStreamError) as info:
        await run_realtime_batch(server.open, inputs(10), app_id=APP, max_reconnects=2, reconnect_delay=0)
    assert not isinstance(info.value, AirflowFailException)
    assert "dropped 3 time(s), more than max_reconnects=2; 6/10 output(s) received" in str(info.value)


async def test_x_fal_error_frame_is_raised_not_retried_by_reconnecting() -> None:
    server = FakeServer(error_frame=(2, "INTERNAL_ERROR"))
    with pytest.raises(FalRealtimeError) as info:
        await run_realtime_batch(server.open, inputs(5), app_id=APP, reconnect_delay=0)
    assert info.value.error == "INTERNAL_ERROR"
    assert "emulator/realtime" in str(info.value)
    assert server.sessions == 1


async def test_idle_timeout_frame_only_asks_for_a_reconnect() -> None:
    server = FakeServer(error_frame=(2, "TIMEOUT"))
    server_calls = {"n": 0}
    original = server.open

    @asynccontextmanager
    async def open_once_failing() -> AsyncIterator[FakeSession]:
        server_calls["n"] += 1
        if server_calls["n"] == 2:
            server.error_frame = None
        async with original() as session:
            yield session

    out = await run_realtime_batch(open_once_failing, inputs(4), app_id=APP, reconnect_delay=0)
    assert out == [{"echo": {"i": i}} for i in range(4)]
    assert server.sessions == 2


@pytest.mark.parametrize(
    ("code", "cls", "text"),
    [
        ("NOT_FOUND", FalNotFoundError, "fal app emulator/realtime has no realtime endpoint"),
        ("Unauthorized", FalAuthError, "was refused (x-fal-error Unauthorized"),
    ],
)
async def test_refusals_become_permanent_errors_naming_the_app(code: str, cls: type, text: str) -> None:
    server = FakeServer(error_frame=(0, code))
    with pytest.raises(cls, match=text.replace("(", r"\(")) as info:
        await run_realtime_batch(server.open, inputs(2), app_id=APP)
    assert isinstance(info.value, AirflowFailException)


async def test_message_timeout_names_the_waiting_input() -> None:
    server = FakeServer(silent_on=2)
    with pytest.raises(FalTimeoutError, match=r"no output for input #2 within message_timeout=0\.2s \(2/4"):
        await run_realtime_batch(server.open, inputs(4), app_id=APP, message_timeout=0.2)


def test_session_drop_classification() -> None:
    assert is_session_drop(FalStreamError("closed (code 1006)"))
    assert is_session_drop(FalRealtimeError("x", error="TIMEOUT"))
    assert not is_session_drop(FalRealtimeError("x", error="INTERNAL_ERROR"))
    assert not is_session_drop(FalTimeoutError("no reply"))


# --------------------------------------------------------------------------- operator


class FakeRealtimeHook(FalHook):
    """The real hook (and so its batch loop), with sessions from the scripted server."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__()
        self.server = server
        self.calls: list[dict[str, Any]] = []
        self.client_closed = False

    async def aclose_shared_client(self) -> None:  # type: ignore[override]
        self.client_closed = True

    def arealtime(self, app_id: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls.append({"app_id": app_id, **kwargs})
        return self.server.open()


def make_op(server: FakeServer, **kwargs: Any) -> tuple[FalRealtimeOperator, FakeRealtimeHook]:
    params: dict[str, Any] = {"task_id": "rt", "app_id": APP, "inputs": inputs(5)}
    params.update(kwargs)
    op = FalRealtimeOperator(**params)
    hook = FakeRealtimeHook(server)
    install_hook(op, checked_fake(hook))
    return op, hook


def context() -> dict[str, Any]:
    return {"ti": SimpleNamespace(task_id="rt", run_id="manual__1", map_index=-1)}


def test_execute_returns_one_output_per_input_and_opens_sessions_through_the_hook() -> None:
    server = FakeServer(drop_after=[2])
    op, hook = make_op(server, max_buffering=4, token_expiration=60, path="/realtime")
    assert op.execute(context()) == [{"echo": {"i": i}} for i in range(5)]
    assert (
        hook.calls
        == [
            {"app_id": APP, "path": "/realtime", "max_buffering": 4, "token_expiration": 60},
        ]
        * 2
    ), "each reconnect asks the hook for a new session (and so a fresh token)"


def test_execute_select_applies_per_output_and_output_path_writes_all(tmp_path: Any) -> None:
    op, _ = make_op(FakeServer(), select="echo.i", output_path=f"file://{tmp_path}")
    manifest = op.execute(context())
    assert manifest["selected"] == [0, 1, 2, 3, 4]
    written = json.loads((tmp_path / "realtime_rt_manual__1.json").read_text())
    assert written == [{"echo": {"i": i}} for i in range(5)]


def test_execute_failure_writes_nothing(tmp_path: Any) -> None:
    op, _ = make_op(FakeServer(error_frame=(3, "INTERNAL_ERROR")), output_path=f"file://{tmp_path}")
    with pytest.raises(FalRealtimeError):
        op.execute(context())
    assert list(tmp_path.iterdir()) == []


def test_execute_with_no_inputs_opens_nothing() -> None:
    server = FakeServer()
    op, _ = make_op(server, inputs=[])
    assert op.execute(context()) == []
    assert server.sessions == 0


def test_execute_refuses_a_mapping_as_inputs() -> None:
    with pytest.raises(ValueError, match="must be a list of input mappings, got dict"):
        make_op(FakeServer(), inputs={"prompt": "one"})  # known when the DAG is parsed
    op, _ = make_op(FakeServer())
    op.inputs = {"prompt": "one"}  # what a template rendered
    with pytest.raises(ValueError, match="must be a list of input mappings, got dict"):
        op.execute(context())
    op.inputs = '[{"prompt": "one"}]'  # a templated list rendered as text
    with pytest.raises(ValueError, match=r"got str.*render_template_as_native_obj=True"):
        op.execute(context())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_in_flight": 0}, "max_in_flight must be an integer >= 1"),
        ({"message_timeout": 0}, "message_timeout must be a positive"),
        ({"max_reconnects": -1}, "max_reconnects must be an integer >= 0"),
        ({"max_buffering": 61}, "max_buffering must be an integer from 1 to 60"),
    ],
)
def test_bad_settings_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FalRealtimeOperator(task_id="t", app_id=APP, inputs=[], **kwargs)


def test_templated_and_mappable() -> None:
    from airflow.sdk import DAG
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    with DAG("rt_templates", schedule=None):
        op = FalRealtimeOperator(
            task_id="t", app_id="{{ params.app }}", inputs=[{"prompt": "{{ params.p }}"}], path="/realtime"
        )
        mapped = FalRealtimeOperator.partial(task_id="m", app_id=APP).expand(inputs=[[{"a": 1}], [{"a": 2}]])
    op.render_template_fields({"params": {"app": "fal-ai/fast-sdxl", "p": "cat"}})
    assert (op.app_id, op.inputs) == ("fal-ai/fast-sdxl", [{"prompt": "cat"}])
    assert isinstance(mapped, MappedOperator)
