"""A deferrable FalBatchOperator over real HTTP: rounds on the worker, the window in the trigger.

Each round is ``execute`` / ``execute_complete`` as Airflow calls them; between rounds the real
``FalBatchTrigger`` (its own ``FalHook``, the emulator over HTTP) waits on the parked requests.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fal_provider._compat import TaskDeferred
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalInputError, FalServerError
from fal_provider.operators.batch import FalBatchOperator, iter_batch_results
from fal_provider.triggers.batch import FalBatchTrigger
from tests.integration.batch.conftest import batch_context

WINDOW = 6


def deferrable_batch(tmp_path: Path, inputs: Any, **kwargs: Any) -> FalBatchOperator:
    params: dict[str, Any] = {
        "task_id": "batch",
        "app_id": "emulator/echo",
        "inputs": inputs,
        "output_path": f"file://{tmp_path}/out",
        "max_in_flight": WINDOW,
        "deferrable": True,
        "poll_interval": 0.02,
        "max_poll_interval": 0.05,
        "retry_min_wait": 0.01,
        "retry_max_wait": 0.05,
    }
    params.update(kwargs)
    return FalBatchOperator(**params)


async def _first_event(trigger: FalBatchTrigger) -> dict[str, Any]:
    return (await trigger.run().__anext__()).payload


def run_rounds(op: FalBatchOperator, context: dict[str, Any]) -> tuple[dict[str, Any], list[FalBatchTrigger]]:
    """Drive the task as Airflow would: execute, then trigger + execute_complete until it returns."""
    triggers: list[FalBatchTrigger] = []
    call = lambda: op.execute(context)  # noqa: E731
    while True:
        try:
            return call(), triggers
        except TaskDeferred as deferred:
            assert deferred.method_name == "execute_complete"
            classpath, kwargs = deferred.trigger.serialize()
            assert classpath == "fal_provider.triggers.batch.FalBatchTrigger"
            trigger = FalBatchTrigger(**kwargs)  # as the triggerer rebuilds it
            triggers.append(trigger)
            event = asyncio.run(_first_event(trigger))
            call = lambda event=event: op.execute_complete(context, event)  # noqa: E731


def test_rounds_release_the_worker_and_finish_every_item_once(emu: FalEmulator, tmp_path: Path) -> None:
    inputs = [{"n": n, "duration_s": 0.2} for n in range(20)]
    manifest, triggers = run_rounds(deferrable_batch(tmp_path, inputs), batch_context())

    assert manifest["counts"] == {"success": 20}
    assert sorted(line["result"]["n"] for line in iter_batch_results(manifest)) == list(range(20))
    stats = emu.stats()
    assert stats["submits_total"] == 20, "a resume never submits an item again"
    assert stats["outstanding"]["peak"] <= WINDOW, "parked requests count towards the window"
    assert len(triggers) >= 20 // WINDOW, "the task deferred between rounds"
    assert all(len(t.requests) <= WINDOW for t in triggers)
    # Each round waits until a quarter of its window (at least one request) has finished.
    assert all(t.ready_count == max(1, -(-len(t.requests) // 4)) for t in triggers)
    assert stats["result_calls"] == 20


def test_a_fresh_operator_each_round_resumes_from_the_journal(emu: FalEmulator, tmp_path: Path) -> None:
    """Airflow resumes a deferred task in a new process: nothing but the journal and the event carry over."""
    inputs = [{"n": n, "duration_s": 0.1} for n in range(9)]
    context = batch_context()
    with pytest.raises(TaskDeferred) as first:
        deferrable_batch(tmp_path, inputs).execute(context)
    trigger = FalBatchTrigger(**first.value.trigger.serialize()[1])
    while True:
        event = asyncio.run(_first_event(trigger))
        try:
            manifest = deferrable_batch(tmp_path, inputs).execute_complete(context, event)
            break
        except TaskDeferred as deferred:
            trigger = FalBatchTrigger(**deferred.trigger.serialize()[1])
    assert manifest["counts"] == {"success": 9}
    assert emu.stats()["submits_total"] == 9


def test_a_kill_while_deferred_cancels_the_window_and_a_clear_sends_it_again(
    emu: FalEmulator, tmp_path: Path
) -> None:
    inputs = [{"n": n, "duration_s": 1.5} for n in range(4)]
    with pytest.raises(TaskDeferred) as deferred:
        deferrable_batch(tmp_path, inputs).execute(batch_context())
    trigger = FalBatchTrigger(**deferred.value.trigger.serialize()[1])
    assert len(trigger.requests) == 4

    async def wait_then_kill() -> None:
        task = asyncio.ensure_future(_first_event(trigger))
        await asyncio.sleep(0.2)
        assert not task.done(), "nothing finished yet: the trigger keeps waiting"
        task.cancel()
        await trigger.on_kill()  # Airflow >= 3.3 on a user's kill (no task instance: not "moved")

    asyncio.run(wait_then_kill())
    states = {emu.request_info(r["request_id"])["error_type"] for r in trigger.requests}
    assert states == {"client_cancelled"}
    assert emu.stats()["cancels"] == 4

    # The user clears the task: the next try finds the requests cancelled and sends them again.
    manifest, _ = run_rounds(deferrable_batch(tmp_path, inputs), batch_context(try_number=2))
    assert manifest["counts"] == {"success": 4}
    assert emu.stats()["submits_total"] == 8, "each cancelled request is sent once more, no more"


def test_a_window_error_beyond_the_tolerance_ends_the_wait_as_an_error(
    emu: FalEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = json.loads(emu.connection_json())
    connection["extra"] = {**connection["extra"], "retry_limit": 1, "retry_min_wait": 0.01}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_FAST_FAIL", json.dumps(connection))
    inputs = [{"n": n, "duration_s": 5} for n in range(2)]
    op = deferrable_batch(tmp_path, inputs, fal_conn_id="fal_fast_fail")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(batch_context())
    emu.set_faults(seed=1, rules=[{"kind": "503", "rate": 1.0, "endpoints": ["status"]}])
    kwargs = {**deferred.value.trigger.serialize()[1], "max_consecutive_errors": 1}
    event = asyncio.run(_first_event(FalBatchTrigger(**kwargs)))
    assert event["status"] == "error"
    with pytest.raises(FalServerError, match="503"):
        op.execute_complete(batch_context(), event)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"resume_fraction": 0}, "resume_fraction"),
        ({"resume_fraction": 1.5}, "resume_fraction"),
        ({"deferrable": "yes"}, "deferrable"),
    ],
)
def test_bad_deferral_settings_fail_when_the_dag_is_parsed(
    tmp_path: Path, kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(FalInputError, match=problem):
        deferrable_batch(tmp_path, [{"n": 1}], **kwargs)


def test_task_fal_batch_calls_its_function_once_across_rounds(emu: FalEmulator, tmp_path: Path) -> None:
    """A later round must not compute the inputs again: they could differ, and new items cost money."""
    import pendulum
    from airflow.sdk import DAG, task

    calls: list[int] = []

    @task.fal_batch(
        app_id="emulator/echo",
        output_path=f"file://{tmp_path}/out",
        max_in_flight=3,
        deferrable=True,
        poll_interval=0.02,
        max_poll_interval=0.05,
    )
    def prompts() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"n": n + 100 * len(calls), "duration_s": 0.05} for n in range(7)]

    with DAG("taskflow_batch", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        op = prompts().operator

    manifest, triggers = run_rounds(op, batch_context())
    assert calls == [1] and len(triggers) >= 2
    assert sorted(line["result"]["n"] for line in iter_batch_results(manifest)) == [100 + n for n in range(7)]
    assert emu.stats()["submits_total"] == 7
