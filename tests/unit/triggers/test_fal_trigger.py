"""FalRequestTrigger: serialization, deadline, transient errors, stream fallback, on_kill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import AsyncMock

import pytest

from fal_provider.exceptions import FalAuthError, FalServerError, FalStreamError
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.waiting import AdaptiveInterval
from tests.unit.operators.fakes import done, install_hook, queued, running
from tests.unit.triggers.helpers import REF, async_hook, first_event, trigger


def test_serialize_round_trip_has_identifiers_and_no_credentials() -> None:
    trig = FalRequestTrigger(
        request=REF,
        fal_conn_id="my_fal",
        wait_mode="stream",
        poll_interval=2,
        max_poll_interval=10,
        end_time=1_900_000_000.0,
        max_consecutive_errors=3,
        cancel_on_kill=False,
        log_fal_logs=True,
    )
    classpath, kwargs = trig.serialize()
    assert classpath == "fal_provider.triggers.fal.FalRequestTrigger"
    assert kwargs["request"] == REF and kwargs["end_time"] == 1_900_000_000.0
    rebuilt = FalRequestTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert "key" not in str(kwargs).lower() and "password" not in str(kwargs).lower()


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="backstop_interval"):
        trigger(wait_mode="webhook", backstop_interval=0)
    with pytest.raises(ValueError, match="Unknown wait_mode 'sse'"):
        trigger(wait_mode="sse")
    with pytest.raises(ValueError, match="request reference"):
        FalRequestTrigger(request={"request_id": "x"})


async def test_poll_until_success() -> None:
    hook = async_hook([queued(2), running(), done()])
    event = await first_event(trigger(), hook)
    assert event == {"status": "success", "request": REF}
    assert hook.aget_status.await_count == 3


async def test_failed_request_event_carries_fal_error() -> None:
    hook = async_hook([done(error="Runner disconnected", error_type="runner_disconnected")])
    event = await first_event(trigger(), hook)
    assert event["status"] == "failed"
    assert event["error"] == "Runner disconnected" and event["error_type"] == "runner_disconnected"


async def test_past_deadline_times_out_without_polling() -> None:
    hook = async_hook([])
    event = await first_event(trigger(end_time=time.time() - 1), hook)
    assert event["status"] == "timeout"
    hook.aget_status.assert_not_awaited()


async def test_deadline_reached_while_waiting() -> None:
    hook = async_hook()
    hook.aget_status = AsyncMock(return_value=queued())
    event = await first_event(trigger(end_time=time.time() + 0.2), hook)
    assert event["status"] == "timeout" and event["request"] == REF


async def test_tolerates_transient_errors_then_succeeds() -> None:
    boom = FalServerError("503 from fal")
    hook = async_hook([boom, boom, running(), done()])
    event = await first_event(trigger(max_consecutive_errors=2), hook)
    assert event["status"] == "success"


async def test_too_many_transient_errors_yields_error_event() -> None:
    boom = FalServerError("503 from fal")
    hook = async_hook([boom, boom, boom])
    event = await first_event(trigger(max_consecutive_errors=2), hook)
    assert event["status"] == "error"
    assert event["error_class"] == "FalServerError" and event["retryable"] is True


async def test_permanent_error_ends_wait_immediately() -> None:
    hook = async_hook([FalAuthError("401: bad key")])
    event = await first_event(trigger(max_consecutive_errors=5), hook)
    assert event["status"] == "error" and event["error_class"] == "FalAuthError"
    assert event["retryable"] is False
    assert hook.aget_status.await_count == 1


async def test_stream_mode_uses_sse() -> None:
    async def stream(ref: Any, *, logs: bool = False) -> AsyncIterator[Any]:
        for status in (queued(1), running(), done()):
            yield status

    hook = async_hook([])
    hook.aiter_status = stream
    event = await first_event(trigger(wait_mode="stream"), hook)
    assert event["status"] == "success"
    hook.aget_status.assert_not_awaited()


async def test_stream_breaks_then_falls_back_to_polling() -> None:
    async def broken(ref: Any, *, logs: bool = False) -> AsyncIterator[Any]:
        yield queued(1)
        raise FalStreamError("stream dropped")

    hook = async_hook([running(), done()])
    hook.aiter_status = broken
    event = await first_event(trigger(wait_mode="stream"), hook)
    assert event["status"] == "success"
    assert hook.aget_status.await_count == 2


async def test_stream_ending_early_falls_back_to_polling() -> None:
    async def short(ref: Any, *, logs: bool = False) -> AsyncIterator[Any]:
        yield running()

    hook = async_hook([done()])
    hook.aiter_status = short
    event = await first_event(trigger(wait_mode="stream"), hook)
    assert event["status"] == "success" and hook.aget_status.await_count == 1


async def test_on_kill_cancels_once_and_never_raises() -> None:
    hook = async_hook()
    trig = install_hook(trigger(), hook)
    await trig.on_kill()
    await trig.on_kill()
    hook.acancel.assert_awaited_once()
    assert hook.acancel.await_args.args[0].request_id == "req-1"

    failing = async_hook()
    failing.acancel.side_effect = FalServerError("boom")
    await install_hook(trigger(), failing).on_kill()  # logged, not raised
    failing.acancel.assert_awaited_once()


async def test_on_kill_disabled() -> None:
    hook = async_hook()
    await install_hook(trigger(cancel_on_kill=False), hook).on_kill()
    hook.acancel.assert_not_awaited()


async def test_logs_queue_position_and_fal_logs(capsys: pytest.CaptureFixture[str]) -> None:
    line = {"message": "step 1/4", "level": "INFO", "timestamp": "t1"}
    hook = async_hook([queued(5), queued(5), queued(4), running([line]), running([line]), done()])
    trig = trigger(log_fal_logs=True)
    await first_event(trig, hook)
    text = capsys.readouterr().out  # Airflow's structlog writes task/trigger logs to stdout here
    assert text.count("queue position 5") == 1 and "queue position 4" in text
    assert text.count("step 1/4") == 1  # the moving log window repeats lines; logged once
    assert hook.aget_status.await_args.kwargs["logs"] is True


def test_adaptive_interval_backs_off_while_queued_and_resets_when_running() -> None:
    interval = AdaptiveInterval(1.0, 4.0)
    waits = [interval.next(queued()) for _ in range(5)]
    assert waits == [1.5, 2.25, 3.375, 4.0, 4.0]
    assert interval.next(running()) == 1.0


async def test_run_does_not_block_the_loop() -> None:
    hook = async_hook()
    hook.aget_status.side_effect = lambda *args, **kwargs: queued()
    trig = install_hook(trigger(poll_interval=0.05, max_poll_interval=0.05), hook)
    task = asyncio.create_task(trig.run().__anext__())
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
