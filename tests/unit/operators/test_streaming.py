"""FalStreamOperator logic with the hook replaced by an in-memory event source."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock, PropertyMock, patch

import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.exceptions import (
    FalPermanentRequestFailed,
    FalRequestFailed,
    FalStreamError,
    FalTimeoutError,
    FalTransientError,
)
from fal_provider.hooks._sse import error_in_event, stream_error_from_event
from fal_provider.hooks.fal import FalHook
from fal_provider.operators.lifecycle import RateLimitedLog
from fal_provider.operators.streaming import FalStreamOperator, StreamCollector, drain_stream
from tests.unit.operators.fakes import checked_fake, install_hook

APP = "emulator/stream"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStreamHook(FalHook):
    """The real hook with ``astream`` replaced: yields scripted events, optionally failing part way."""

    def __init__(self, events: list[Any], *, fail_with: Exception | None = None, gap: float = 0.0) -> None:
        super().__init__()
        self.events = events
        self.fail_with = fail_with
        self.gap = gap
        self.calls: list[dict[str, Any]] = []
        self.closed = False
        self.client_closed = False

    def astream(self, app_id: str, arguments: dict[str, Any], **kwargs: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        self.calls.append({"app_id": app_id, "arguments": arguments, **kwargs})
        return self._gen()

    async def aclose_shared_client(self) -> None:  # type: ignore[override]
        self.client_closed = True

    async def _gen(self) -> AsyncIterator[Any]:
        try:
            for event in self.events:
                if self.gap:
                    await asyncio.sleep(self.gap)
                yield event
            if self.fail_with is not None:
                raise self.fail_with
        finally:
            self.closed = True


def make_op(hook: FakeStreamHook, **kwargs: Any) -> FalStreamOperator:
    params: dict[str, Any] = {"task_id": "stream", "app_id": APP, "arguments": {"count": 2}}
    params.update(kwargs)
    op = FalStreamOperator(**params)
    install_hook(op, checked_fake(hook))
    return op


def context(map_index: int = -1) -> dict[str, Any]:
    return {"ti": SimpleNamespace(task_id="stream", run_id="manual__1", map_index=map_index)}


EVENTS = [
    {"progress": 1, "count": 2},
    {"progress": 2, "count": 2},
    {"done": True, "output": "streamed 2 events"},
]


# --------------------------------------------------------------------------- error events


@pytest.mark.parametrize(
    "event",
    [
        {"output": "partial text", "partial": True, "error": None},
        {"progress": 1},
        "a bare string event",
        [1, 2, 3],
        {"error": ""},
    ],
)
def test_events_without_an_error_are_not_errors(event: Any) -> None:
    assert error_in_event(event) is None


def test_error_event_message_and_type_are_taken_from_the_app() -> None:
    err = stream_error_from_event(
        APP, {"error": "Emulated stream error at event 2", "error_type": "stream_error"}, 2
    )
    assert isinstance(err, FalRequestFailed)
    assert err.retryable is True
    assert err.error_type == "stream_error"
    assert str(err) == (
        "fal stream from emulator/stream reported an error at event 2 (stream_error): Emulated stream error at event 2"
    )


def test_nested_error_object_and_workflow_error_event() -> None:
    assert error_in_event({"error": {"message": "GPU fell over", "type": "runner_server_error"}}) == (
        "GPU fell over",
        "runner_server_error",
        None,
    )
    assert error_in_event({"type": "error", "message": "workflow node 3 failed"}) == (
        "workflow node 3 failed",
        None,
        None,
    )


def test_app_marking_an_error_non_retryable_fails_without_retries() -> None:
    err = stream_error_from_event(APP, {"error": "prompt rejected", "retryable": False}, 1)
    assert isinstance(err, FalPermanentRequestFailed)
    assert isinstance(err, AirflowFailException)


def test_permanent_fal_error_type_fails_without_retries() -> None:
    err = stream_error_from_event(APP, {"error": "blocked", "error_type": "content_policy_violation"}, 1)
    assert isinstance(err, AirflowFailException)


def test_retryable_true_overrides_a_permanent_type() -> None:
    err = stream_error_from_event(APP, {"error": "x", "error_type": "bad_request", "retryable": True}, 1)
    assert isinstance(err, FalTransientError)


# --------------------------------------------------------------------------- rate-limited log


def test_rate_limited_log_writes_one_line_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = logging.getLogger("test.stream.rate")
    limiter = RateLimitedLog(log, 5.0, clock=clock)
    rendered: list[int] = []

    def line(i: int) -> Any:
        def render() -> str:
            rendered.append(i)
            return f"event {i}"

        return render

    with caplog.at_level(logging.INFO, logger="test.stream.rate"):
        for i in range(12):
            clock.now = i * 1.0  # one event per second
            limiter.offer(line(i))
    assert [r.getMessage() for r in caplog.records] == [
        "event 0",
        "event 5 (+4 earlier update(s) not shown)",
        "event 10 (+4 earlier update(s) not shown)",
    ]
    assert rendered == [0, 5, 10], "held-back lines must not even be formatted"
    assert limiter.skipped == 1


def test_rate_limited_log_zero_interval_logs_everything_and_force_bypasses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = logging.getLogger("test.stream.rate0")
    with caplog.at_level(logging.INFO, logger="test.stream.rate0"):
        every = RateLimitedLog(log, 0, clock=clock)
        for i in range(3):
            every.offer(lambda i=i: f"e{i}")
        slow = RateLimitedLog(log, 60, clock=clock)
        slow.offer(lambda: "first")
        slow.offer(lambda: "dropped")
        slow.offer(lambda: "reconnecting", force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "e0",
        "e1",
        "e2",
        "first",
        "reconnecting (+1 earlier update(s) not shown)",
    ]


# --------------------------------------------------------------------------- collector + deadlines


def quiet() -> RateLimitedLog:
    return RateLimitedLog(logging.getLogger("test.quiet"), 3600)


def test_collector_final_is_the_last_event_before_close() -> None:
    collector = StreamCollector(APP, collect="final", progress=quiet())
    for event in EVENTS:
        collector.feed(event)
    assert collector.result() == EVENTS[-1]
    assert collector.events == [], "final mode must not keep every event in memory"


def test_collector_all_keeps_every_event_in_order() -> None:
    collector = StreamCollector(APP, collect="all", progress=quiet())
    for event in EVENTS:
        collector.feed(event)
    assert collector.result() == EVENTS


def test_collector_without_events_is_a_broken_stream() -> None:
    with pytest.raises(FalStreamError, match="emulator/stream ended without sending any event"):
        StreamCollector(APP, progress=quiet()).result()


async def test_idle_timeout_names_the_limit_and_closes_the_stream() -> None:
    hook = FakeStreamHook([{"progress": 1}, {"progress": 2}], gap=0.0)

    async def slow() -> AsyncIterator[Any]:
        async for event in hook._gen():
            yield event
        await asyncio.sleep(30)
        yield {"done": True}

    seen: list[Any] = []
    with pytest.raises(FalTimeoutError, match=r"sent no event for idle_timeout=0.2s \(after 2 event\(s\)\)"):
        await drain_stream(slow(), seen.append, app_id=APP, idle_timeout=0.2)
    assert seen == [{"progress": 1}, {"progress": 2}]
    assert hook.closed


async def test_whole_stream_timeout_even_when_events_keep_coming() -> None:
    async def chatty() -> AsyncIterator[Any]:
        i = 0
        while True:
            i += 1
            await asyncio.sleep(0.02)
            yield {"progress": i}

    seen: list[Any] = []
    with pytest.raises(FalTimeoutError, match=r"did not finish within timeout=0\.3s"):
        await drain_stream(chatty(), seen.append, app_id=APP, timeout=0.3, idle_timeout=5)
    assert len(seen) >= 2


async def test_drain_returns_count_when_the_server_closes() -> None:
    hook = FakeStreamHook(EVENTS)
    seen: list[Any] = []
    assert await drain_stream(hook._gen(), seen.append, app_id=APP, timeout=10, idle_timeout=10) == 3
    assert seen == EVENTS


# --------------------------------------------------------------------------- operator


def test_execute_returns_the_final_event_and_passes_arguments() -> None:
    hook = FakeStreamHook(EVENTS)
    op = make_op(hook, headers={"X-Trace": "1"}, path="/stream")
    assert op.execute(context()) == EVENTS[-1]
    assert hook.calls == [
        {
            "app_id": APP,
            "arguments": {"count": 2},
            "path": "/stream",
            "headers": {"X-Trace": "1"},
            "timeout": None,
        }
    ]
    assert hook.client_closed, "the loop's shared HTTP client must be closed with the loop"


def test_arguments_rendered_to_text_fail_before_streaming_and_say_how_to_fix() -> None:
    hook = FakeStreamHook(EVENTS)
    op = make_op(hook)
    op.arguments = "{'count': 2}"  # a templated dict rendered as text (Python repr)
    with pytest.raises(ValueError, match=r"must render to a mapping.*render_template_as_native_obj=True"):
        op.execute(context())
    assert hook.calls == []


def test_execute_collect_all_applies_select_to_each_event() -> None:
    events = [{"output": "a", "partial": True}, {"output": "ab", "partial": False}]
    op = make_op(FakeStreamHook(events), collect="all", select="output")
    assert op.execute(context()) == ["a", "ab"]


def test_execute_select_on_final_event() -> None:
    op = make_op(FakeStreamHook(EVENTS), select=["done", "output"])
    assert op.execute(context()) == {"done": True, "output": "streamed 2 events"}


def test_execute_output_path_writes_the_final_event_and_returns_a_manifest(tmp_path: Any) -> None:
    op = make_op(FakeStreamHook(EVENTS), output_path=f"file://{tmp_path}")
    manifest = op.execute(context(map_index=3))
    written = tmp_path / "stream_stream_manual__1_3.json"
    assert manifest["result_path"].endswith("stream_stream_manual__1_3.json")
    assert json.loads(written.read_text()) == EVENTS[-1]


def test_broken_stream_is_retryable_and_writes_nothing(tmp_path: Any) -> None:
    broken = FalStreamError("stream from emulator/stream broke: RemoteProtocolError")
    op = make_op(FakeStreamHook(EVENTS[:2], fail_with=broken), output_path=f"file://{tmp_path}")
    with pytest.raises(FalStreamError) as info:
        op.execute(context())
    assert not isinstance(info.value, AirflowFailException)
    assert list(tmp_path.iterdir()) == []


def test_error_event_fails_with_the_app_message_and_writes_nothing(tmp_path: Any) -> None:
    events = [{"progress": 1}, {"error": "Emulated stream error at event 2", "error_type": "stream_error"}]
    op = make_op(FakeStreamHook([*events, {"done": True}]), output_path=f"file://{tmp_path}")
    with pytest.raises(FalRequestFailed, match="Emulated stream error at event 2"):
        op.execute(context())
    assert list(tmp_path.iterdir()) == []


def test_bad_select_fails_before_writing(tmp_path: Any) -> None:
    op = make_op(FakeStreamHook(EVENTS), output_path=f"file://{tmp_path}", select="images.0.url")
    with pytest.raises(AirflowFailException, match="no field 'images'"):
        op.execute(context())
    assert list(tmp_path.iterdir()) == []


def test_hook_errors_reaching_the_log_name_the_app() -> None:
    bad = FalStreamError("stream event 3 is not JSON: 'oops'")
    op = make_op(FakeStreamHook([], fail_with=bad))
    with pytest.raises(FalStreamError) as info:
        op.execute(context())
    assert "emulator/stream" in str(info.value)
    assert "stream event 3 is not JSON" in str(info.value)
    assert type(info.value) is FalStreamError


def test_progress_log_is_rate_limited() -> None:
    events = [{"output": "tok" * i, "partial": True} for i in range(1, 50)] + [{"output": "done"}]
    op = make_op(FakeStreamHook(events), log_interval=3600)
    log = MagicMock()
    with patch.object(FalStreamOperator, "log", new_callable=PropertyMock, return_value=log):
        op.execute(context())
    lines = [call.args[0] % call.args[1:] for call in log.info.call_args_list]
    progress = [line for line in lines if "stream event" in line]
    assert progress == ['emulator/stream stream event 1: {"output":"tok","partial":true}']
    assert any("50 event(s)" in line and '{"output":"done"}' in line for line in lines), lines


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"collect": "first"}, "collect must be 'final' or 'all'"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"idle_timeout": -1}, "idle_timeout must be a positive"),
        ({"log_interval": -1}, "log_interval must be"),
    ],
)
def test_bad_settings_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FalStreamOperator(task_id="t", app_id=APP, **kwargs)


def test_templated_fields_render() -> None:
    from airflow.sdk import DAG

    with DAG("stream_templates", schedule=None):
        op = FalStreamOperator(
            task_id="t",
            app_id="{{ params.app }}",
            arguments={"prompt": "{{ params.prompt }}"},
            path="{{ params.path }}",
            headers={"X-Run": "{{ run_id }}"},
        )
    ctx: dict[str, Any] = {
        "params": {"app": "fal-ai/any-llm", "prompt": "hi", "path": "/stream"},
        "run_id": "r1",
    }
    op.render_template_fields(ctx)
    assert (op.app_id, op.arguments, op.path, op.headers) == (
        "fal-ai/any-llm",
        {"prompt": "hi"},
        "/stream",
        {"X-Run": "r1"},
    )


def test_operator_is_mappable_over_arguments() -> None:
    from airflow.sdk import DAG
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    with DAG("stream_mapped", schedule=None):
        mapped = FalStreamOperator.partial(task_id="t", app_id="fal-ai/any-llm").expand(
            arguments=[{"prompt": "a"}, {"prompt": "b"}]
        )
    assert isinstance(mapped, MappedOperator)
    assert mapped.expand_input.value == {"arguments": [{"prompt": "a"}, {"prompt": "b"}]}
