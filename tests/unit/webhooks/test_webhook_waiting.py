"""The webhook-mode wait: record first, then a slow backstop; time is simulated, nothing sleeps."""

from __future__ import annotations

import time

import pytest

from fal_provider.webhooks.store import WebhookRecord, record_key
from fal_provider.webhooks.waiting import (
    aget_webhook_record,
    should_cancel_on_kill,
    wait_for_webhook_or_backstop,
)


class World:
    """A fake clock and Variable store; ``sleep`` advances the clock and runs scheduled writes."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.variables: dict[str, str] = {}
        self.reads = 0
        self.polls = 0
        self.sleeps: list[float] = []
        self.webhook_at: float | None = None
        self.completes_at: float | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.webhook_at is not None and self.now >= self.webhook_at:
            self.record("req-1")

    async def read(self, key: str) -> str | None:
        self.reads += 1
        return self.variables.get(key)

    async def check_status(self) -> str | None:
        self.polls += 1
        return "COMPLETED" if self.completes_at is not None and self.now >= self.completes_at else None

    def record(self, request_id: str, status: str = "OK") -> None:
        self.variables[record_key(request_id)] = WebhookRecord(request_id, status, self.now).to_json()

    async def wait(self, **kwargs: float) -> object:
        return await wait_for_webhook_or_backstop(
            "req-1",
            self.check_status,
            reader=self.read,
            sleep=self.sleep,
            clock=self.clock,
            jitter=0,
            **kwargs,
        )


async def test_record_written_before_the_trigger_started_ends_the_wait_at_once() -> None:
    world = World()
    world.record("req-1")
    result = await world.wait(backstop_interval=120)
    assert result.source == "webhook" and result.record.request_id == "req-1"  # type: ignore[attr-defined]
    assert (world.polls, world.sleeps) == (0, [])


async def test_on_time_webhook_costs_no_status_poll() -> None:
    world = World()
    world.webhook_at = world.now + 90
    result = await world.wait(backstop_interval=120)
    assert result.source == "webhook"  # type: ignore[attr-defined]
    assert world.polls == 0, "a callback found at the backstop tick makes the fal poll unnecessary"


async def test_dropped_webhook_is_recovered_by_the_backstop_at_its_pace() -> None:
    world = World()
    world.completes_at = world.now + 500
    result = await world.wait(backstop_interval=120)
    assert result.source == "backstop" and result.status == "COMPLETED"  # type: ignore[attr-defined]
    assert world.sleeps == [120, 120, 120, 120, 120]
    assert world.polls == 5, "one status GET per backstop interval, none in between"


async def test_deadline_ends_the_wait_with_timeout_without_oversleeping() -> None:
    world = World()
    start = world.now
    result = await world.wait(backstop_interval=120, end_time=start + 300)
    assert result.source == "timeout"  # type: ignore[attr-defined]
    assert world.now == start + 300
    assert world.polls == 2


async def test_past_deadline_still_honours_an_existing_record() -> None:
    world = World()
    world.now += 10
    world.record("req-1")
    result = await world.wait(backstop_interval=120, end_time=world.now - 5)
    assert result.source == "webhook"  # type: ignore[attr-defined]


async def test_jitter_spreads_backstop_polls_within_bounds() -> None:
    world = World()
    world.completes_at = world.now + 1
    await wait_for_webhook_or_backstop(
        "req-1", world.check_status, reader=world.read, sleep=world.sleep, clock=world.clock, jitter=0.1
    )
    assert 108 <= world.sleeps[0] <= 132


async def test_non_positive_backstop_is_refused() -> None:
    with pytest.raises(ValueError, match="backstop_interval"):
        await World().wait(backstop_interval=0)


async def test_aget_webhook_record_ignores_garbage() -> None:
    async def garbage(key: str) -> str:
        return "not json"

    assert await aget_webhook_record("req-1", reader=garbage) is None


async def test_should_cancel_on_kill_only_without_a_record() -> None:
    world = World()
    assert await should_cancel_on_kill("req-1", reader=world.read) is True
    world.record("req-1")
    assert await should_cancel_on_kill("req-1", reader=world.read) is False

    async def broken(key: str) -> str:
        raise RuntimeError("supervisor gone")

    assert await should_cancel_on_kill("req-1", reader=broken) is True


def test_record_round_trip_and_payload_size_limit() -> None:
    small = WebhookRecord.from_payload(
        {"request_id": "r", "status": "OK", "payload": {"a": 1}}, user_id="u", payload_max_bytes=100
    )
    big = WebhookRecord.from_payload(
        {"request_id": "r", "status": "OK", "payload": {"a": "x" * 200}}, user_id="u", payload_max_bytes=100
    )
    assert small.payload == {"a": 1} and not small.payload_omitted
    assert big.payload is None and big.payload_omitted
    assert WebhookRecord.from_json(small.to_json()) == small
    assert abs(small.received_at - time.time()) < 60
