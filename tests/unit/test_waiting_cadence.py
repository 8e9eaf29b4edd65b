"""Poll cadence (queue position, observed run times, jitter, detection bound) and the stream cap."""

from __future__ import annotations

import asyncio
import random

import pytest

from fal_provider.waiting import (
    POLL_JITTER,
    POLL_TICK,
    RUNNING_DETECTION_BOUND,
    AdaptiveInterval,
    PollLoad,
    PollPolicy,
    RunTimes,
    StreamSlots,
    WaitPolicy,
    jittered,
    next_tick,
    poll_load,
    sleep_on_tick,
    stream_limit,
    stream_slots,
)
from tests.unit.operators.fakes import done, make_ref, queued, running


def _running_waits(interval: AdaptiveInterval, until: float) -> list[float]:
    now, waits = 0.0, []
    while now < until:
        waits.append(interval.next(running(), now=now))
        now += waits[-1]
    return waits


def test_queue_position_spaces_polls_of_a_request_deep_in_the_queue() -> None:
    assert AdaptiveInterval(1.0, 30.0).next(queued(50)) == 25.0
    assert AdaptiveInterval(1.0, 30.0).next(queued(500)) == 30.0  # never past the ceiling
    assert AdaptiveInterval(1.0, 30.0).next(queued(0)) == 1.5  # next in line: the usual growth


def test_running_without_estimate_grows_with_run_time_up_to_the_detection_bound() -> None:
    waits = _running_waits(AdaptiveInterval(1.0, 30.0), until=120)
    assert waits[:3] == [1.0] * 3  # a request of a few seconds is seen within a second
    assert all(
        w <= max(1.0, t / 2) for w, t in zip(waits, [sum(waits[:i]) for i in range(len(waits))], strict=True)
    )
    assert max(waits) == RUNNING_DETECTION_BOUND and waits[-1] == RUNNING_DETECTION_BOUND
    assert len(waits) < 30  # 120 s at a 1 s floor would be 120 polls
    assert len(_running_waits(AdaptiveInterval(1.0, 30.0), until=30)) <= 11  # a quarter made 16


def test_detection_bound_respects_a_larger_floor_and_a_smaller_ceiling() -> None:
    assert AdaptiveInterval(10.0, 60.0).running_bound == 10.0
    assert AdaptiveInterval(1.0, 2.0).running_bound == 2.0


def _seen_queued(interval: AdaptiveInterval) -> AdaptiveInterval:
    interval.next(queued(0), now=0.0)
    return interval


def test_expected_run_time_polls_towards_the_expected_end_then_at_the_bound() -> None:
    interval = _seen_queued(AdaptiveInterval(1.0, 300.0, expected=600.0))
    assert interval.next(running(), now=1.0) == 299.5  # half of what is left of 10 minutes
    assert interval.next(running(), now=300.0) == 150.0
    assert interval.next(running(), now=599.5) == 1.0  # near the end: the floor
    assert interval.next(running(), now=800.0) == RUNNING_DETECTION_BOUND  # overdue: the bound
    assert len(_running_waits(_seen_queued(AdaptiveInterval(1.0, 300.0, expected=600.0)), until=600)) < 15


def test_run_time_counts_from_the_last_queued_sighting_not_the_first_running_one() -> None:
    interval = AdaptiveInterval(1.0, 300.0, expected=100.0)
    interval.next(queued(3), now=0.0)
    interval.next(queued(0), now=20.0)
    assert interval.next(running(), now=30.0) == 45.0  # (100 - (30 - 20)) / 2: may have started at 20


def test_a_request_already_running_at_the_first_poll_is_polled_within_the_bound() -> None:
    # A triggerer restart (or a wait that began late) first sees a request that may have run for
    # most of its expected time: waiting half of the expected time would miss its end by minutes.
    interval = AdaptiveInterval(1.0, 300.0, expected=600.0)
    waits = _running_waits(interval, until=120)
    assert max(waits) == RUNNING_DETECTION_BOUND


def test_jitter_only_shortens_and_spreads_waits() -> None:
    rng = random.Random(7)
    waits = [jittered(4.0, rng) for _ in range(1000)]
    assert all(4.0 * (1 - POLL_JITTER) <= w <= 4.0 for w in waits)
    assert max(waits) - min(waits) > 0.8  # 10,000 waiters started together do not stay in step


def test_run_times_learn_an_ewma_per_app_and_ignore_nonsense() -> None:
    times = RunTimes()
    assert times.expected("fal-ai/x") is None
    times.record("fal-ai/x", 100.0)
    times.record("fal-ai/x", 200.0)
    assert times.expected("fal-ai/x") == pytest.approx(130.0)
    times.record("fal-ai/x", -1)
    times.record("fal-ai/x", float("nan"))
    assert times.expected("fal-ai/x") == pytest.approx(130.0)


def test_poll_policy_learns_from_fal_inference_time_and_uses_it_for_the_next_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fal_provider import waiting

    monkeypatch.setattr(waiting, "RUN_TIMES", RunTimes())
    ref = make_ref()
    first = PollPolicy(ref, WaitPolicy(max_poll_interval=300), log=_Log())
    status = done()
    status.metrics["inference_time"] = 400.0
    assert isinstance(first.observed(status), dict)
    second = PollPolicy(ref, WaitPolicy(max_poll_interval=300), log=_Log())
    second.observed(queued(0))
    wait = second.observed(running())
    assert isinstance(wait, float) and 150.0 <= wait <= 200.0  # (400 - ~0) / 2, jittered


def test_a_failed_request_teaches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider import waiting

    monkeypatch.setattr(waiting, "RUN_TIMES", RunTimes())
    policy = PollPolicy(make_ref(), WaitPolicy(), log=_Log())
    status = done(error="boom")
    status.metrics["inference_time"] = 5.0
    policy.observed(status)
    assert waiting.RUN_TIMES.expected(make_ref().app_id) is None


def test_stream_slots_cap_open_streams_and_spread_opens_as_they_fill() -> None:
    slots = StreamSlots(limit=2)
    rng = random.Random(1)
    assert slots.open_delay(rng) == 0.0  # nothing open: open now
    assert slots.take() and slots.take()
    assert not slots.take()  # the third waiter polls
    assert 0.0 <= slots.open_delay(rng) <= 1.0
    slots.give_back()
    assert slots.take()


async def test_stream_slots_are_per_loop_and_read_the_configured_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__FAL__MAX_STATUS_STREAMS", "3")
    slots = stream_slots()
    assert slots is stream_slots() and slots.limit == 3


def test_streams_never_take_more_than_half_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert stream_limit() == 512  # the default 10,000 would exhaust descriptors at 1,024
    monkeypatch.setenv("AIRFLOW__FAL__MAX_STATUS_STREAMS", "100")
    assert stream_limit() == 100
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    monkeypatch.setenv("AIRFLOW__FAL__MAX_STATUS_STREAMS", "20000")
    assert stream_limit() == 20000


def test_many_pollers_on_one_loop_space_their_polls_to_the_loop_rate() -> None:
    load = PollLoad(rate=2000.0)
    policy = PollPolicy(make_ref(), WaitPolicy(), log=_Log(), load=load)
    load.pollers = 100  # few: the adaptive interval's first-second polls stand
    assert policy.observed(running()) <= 1.0
    load.pollers = 10_000  # a fan-out: 10,000 x 1 s polls would be 10,000 a second
    waits = [policy.observed(running()) for _ in range(20)]
    assert all(5.0 * (1 - POLL_JITTER) <= w <= 5.0 for w in waits)  # 10,000 / 2,000 per s, jittered
    assert len(set(waits)) > 1  # still spread, not in lockstep
    assert PollLoad(rate=0).spacing() == 0.0  # 0: no limit


async def test_the_poll_load_is_per_loop_and_reads_the_configured_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__FAL__MAX_POLL_RATE", "50")
    load = poll_load()
    assert load is poll_load() and load.rate == 50.0


async def test_a_polling_trigger_counts_itself_on_its_loop_while_it_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fal_provider.triggers.fal import FalRequestTrigger

    seen: list[int] = []

    class Hook:
        async def aget_status(self, ref: object, logs: bool = False) -> object:
            seen.append(poll_load().pollers)
            return done() if len(seen) == 3 else running()

    monkeypatch.setattr("fal_provider.waiting.sleep_on_tick", _no_sleep)
    monkeypatch.setattr("fal_provider.triggers.fal.sleep_on_tick", _no_sleep)
    trigger = FalRequestTrigger(request=make_ref().to_xcom(), wait_mode="poll")
    event = await trigger._wait_poll(Hook(), make_ref())
    assert event["status"] == "success" and seen == [1, 1, 1]
    assert poll_load().pollers == 0


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def test_a_new_loop_gets_its_own_slots() -> None:
    async def grab() -> StreamSlots:
        return stream_slots()

    assert asyncio.run(grab()) is not asyncio.run(grab())


class _Log:
    def info(self, *args: object) -> None: ...

    def warning(self, *args: object) -> None: ...


def test_waits_due_within_one_tick_end_on_the_same_instant() -> None:
    # Two waiters due 0.04 s apart inside one 0.1 s tick get the very same deadline (one loop
    # wake-up for both); none ends before it was due; the next tick is a different instant.
    first, second = next_tick(10.03, 1.0, 0.1), next_tick(10.07, 0.99, 0.1)
    assert first == second == next_tick(11.05, 0.0, 0.1)
    assert first >= 11.03 and second >= 11.06
    assert next_tick(10.13, 1.0, 0.1) > first
    assert next_tick(5.0, -1.0) == next_tick(5.0, 0.0)  # a negative wait is no wait
    assert 11.03 <= next_tick(10.03, 1.0) <= 11.03 + POLL_TICK  # never more than a tick late


async def test_sleep_on_tick_wakes_the_waiters_of_a_tick_in_one_loop_iteration() -> None:
    loop = asyncio.get_running_loop()
    woke: list[int] = []  # the loop iteration each waiter resumed in
    iteration = 0

    async def count_iterations() -> None:
        nonlocal iteration
        while True:
            await asyncio.sleep(0)
            iteration += 1

    async def waiter(seconds: float) -> None:
        start = loop.time()
        await sleep_on_tick(seconds, tick=0.2)
        assert loop.time() - start >= seconds
        woke.append(iteration)

    counter = asyncio.ensure_future(count_iterations())
    try:
        await sleep_on_tick(0.0, tick=0.2)  # just past a tick: the waits below all end on the next
        await asyncio.gather(*(waiter(0.02 + i * 0.01) for i in range(8)))
    finally:
        counter.cancel()
    assert len(woke) == 8 and len(set(woke)) == 1  # all eight resumed in the same iteration
