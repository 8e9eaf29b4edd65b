"""Stream mode past the loop's maximum of open status streams polls instead, and gives slots back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fal_provider.waiting import stream_slots
from tests.unit.operators.fakes import done, running
from tests.unit.triggers.helpers import async_hook, first_event, trigger


def _stream(*statuses: Any) -> Any:
    async def aiter_status(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        for status in statuses:
            yield status

    return aiter_status


async def test_past_the_stream_limit_the_trigger_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FAL__MAX_STATUS_STREAMS", "1")
    slots = stream_slots()
    assert slots.take()  # another waiter on this loop holds the only stream
    hook = async_hook([running(), done()])
    hook.aiter_status.side_effect = _stream(done())
    event = await first_event(trigger(wait_mode="stream"), hook)
    assert event["status"] == "success"
    hook.aiter_status.assert_not_called()
    assert hook.aget_status.await_count == 2
    slots.give_back()


async def test_a_stream_gives_its_slot_back_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FAL__MAX_STATUS_STREAMS", "1")
    for _ in range(2):  # the second wait gets the slot the first one gave back
        hook = async_hook([])
        hook.aiter_status.side_effect = _stream(running(), done())
        assert (await first_event(trigger(wait_mode="stream"), hook))["status"] == "success"
        hook.aget_status.assert_not_awaited()
    assert stream_slots().open == 0
