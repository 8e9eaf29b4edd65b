"""FalBatchOperator over real HTTP against the emulator: window, per-item retries, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalBatchFailed, FalBatchIncomplete
from fal_provider.operators.batch import FalBatchOperator, iter_batch_results
from tests.integration.batch.conftest import batch_context, read_jsonl


def batch(tmp_path: Path, inputs: Any, **kwargs: Any) -> FalBatchOperator:
    params: dict[str, Any] = {
        "task_id": "batch",
        "app_id": "emulator/echo",
        "inputs": inputs,
        "output_path": f"file://{tmp_path}/out",
        "max_in_flight": 8,
        "retry_min_wait": 0.01,
        "retry_max_wait": 0.05,
        "poll_interval": 0.05,
    }
    params.update(kwargs)
    return FalBatchOperator(**params)


@pytest.mark.parametrize("wait_mode", ["stream", "poll"])
def test_every_input_gets_one_result_line_and_xcom_only_a_manifest(
    emu: FalEmulator, tmp_path: Path, wait_mode: str
) -> None:
    inputs = [{"n": n} for n in range(40)]
    manifest = batch(tmp_path, inputs, wait_mode=wait_mode).execute(batch_context())

    assert manifest["counts"] == {"success": 40}
    assert manifest["total"] == 40 and manifest["success_ratio"] == 1.0
    lines = list(iter_batch_results(manifest))
    assert sorted(line["index"] for line in lines) == list(range(40))
    assert all(line["result"]["n"] == line["index"] for line in lines)
    stats = emu.stats()
    assert stats["submits_total"] == 40
    assert stats["outstanding"]["peak"] <= 8  # the sliding window, as fal saw it
    assert manifest["this_try"]["http_calls_per_item"] == 3.0
    assert len(json.dumps(manifest)) < 4096


def test_account_limit_queues_the_rest_and_the_window_still_finishes(
    emu: FalEmulator, tmp_path: Path
) -> None:
    emu.configure(account_concurrency=2)
    inputs = [{"duration_s": 0.05, "n": n} for n in range(12)]
    manifest = batch(tmp_path, inputs, max_in_flight=6).execute(batch_context())
    assert manifest["counts"] == {"success": 12}
    assert emu.stats()["submits_total"] == 12


def test_ten_percent_transient_faults_complete_every_item_without_duplicates(
    emu: FalEmulator, tmp_path: Path
) -> None:
    emu.set_faults(
        seed=7,
        rules=[
            {"kind": "503", "rate": 0.1, "endpoints": ["submit"]},
            {"kind": "429", "rate": 0.1, "endpoints": ["submit"], "retry_after": 0.01},
            {"kind": "502", "rate": 0.1, "endpoints": ["result", "status_stream"]},
        ],
    )
    inputs = [{"n": n} for n in range(100)]
    manifest = batch(tmp_path, inputs, max_item_attempts=6).execute(batch_context())

    assert manifest["counts"] == {"success": 100}
    stats = emu.stats()
    assert stats["faults_injected"], "the faults must actually have fired"
    assert stats["submits_total"] == 100  # refused POSTs were never accepted: one request per input


def test_permanent_failures_go_to_the_failed_inputs_file_and_the_ratio_decides(
    emu: FalEmulator, tmp_path: Path
) -> None:
    def inputs() -> list[dict[str, Any]]:
        return [
            {"arguments": {"kind": "validation" if n % 5 == 0 else "none", "n": n}, "meta": {"row": n}}
            for n in range(20)
        ]

    # 4 of 20 fail for good: 80 % is enough for a ratio of 0.8 ...
    manifest = batch(tmp_path, inputs(), app_id="emulator/fail", min_success_ratio=0.8).execute(
        batch_context(run_id="manual__ok")
    )
    assert manifest["counts"] == {"success": 16, "failed": 4}
    failed = read_jsonl(manifest["failed_inputs_path"])
    assert sorted(record["meta"]["index"] for record in failed) == [0, 5, 10, 15]
    assert all(record["arguments"]["kind"] == "validation" for record in failed)
    assert emu.stats()["submits_total"] == 20  # each permanent failure was submitted once

    # ... and not for 0.9: the task fails without retries (nothing retryable), outputs still written.
    with pytest.raises(FalBatchFailed, match="16 of 20"):
        batch(tmp_path, inputs(), app_id="emulator/fail", min_success_ratio=0.9).execute(
            batch_context(run_id="manual__strict")
        )
    strict = tmp_path / "out" / "manual__strict" / "batch"
    assert len(read_jsonl(strict / "results.jsonl")) == 20
    assert len(read_jsonl(strict / "failed_inputs.jsonl")) == 4


def test_runner_errors_are_retried_per_item_then_left_to_the_task_retry(
    emu: FalEmulator, tmp_path: Path
) -> None:
    inputs = [{"kind": "runner"}, {"kind": "none"}]
    with pytest.raises(FalBatchIncomplete):
        batch(tmp_path, inputs, app_id="emulator/fail", max_item_attempts=3).execute(batch_context())
    assert emu.stats()["submits"]["emulator/fail"] == 1 + 3
    # The task's retry gives the retryable item fresh attempts and skips the one that succeeded.
    with pytest.raises(FalBatchIncomplete):
        batch(tmp_path, inputs, app_id="emulator/fail", max_item_attempts=2).execute(
            batch_context(try_number=2)
        )
    assert emu.stats()["submits"]["emulator/fail"] == 1 + 3 + 2


def test_validation_failures_are_recorded_once_and_fed_back_in(emu: FalEmulator, tmp_path: Path) -> None:
    inputs = [{"kind": "validation", "prompt": f"p{n}"} for n in range(3)]
    with pytest.raises(FalBatchFailed) as info:
        batch(tmp_path, inputs, app_id="emulator/fail").execute(batch_context())
    assert "0 of 3" in str(info.value)
    assert emu.stats()["submits_total"] == 3  # a 422 is never retried
    folder = tmp_path / "out" / "manual__batch" / "batch"
    failed = read_jsonl(folder / "failed_inputs.jsonl")
    assert sorted(record["meta"]["index"] for record in failed) == [0, 1, 2]
    assert all(record["meta"]["http_status"] == 422 for record in failed)
    lines = read_jsonl(folder / "results.jsonl")
    assert {line["status"] for line in lines} == {"failed"} and len(lines) == 3

    # The failed-inputs file is a valid input of its own.
    from airflow.sdk import ObjectStoragePath

    again = batch(tmp_path, ObjectStoragePath(f"file://{folder}/failed_inputs.jsonl"), app_id="emulator/echo")
    manifest = again.execute(batch_context(run_id="manual__again"))
    assert manifest["counts"] == {"success": 3}


def test_a_retry_of_the_same_run_skips_finished_items(emu: FalEmulator, tmp_path: Path) -> None:
    inputs = [{"n": n} for n in range(10)]
    batch(tmp_path, inputs).execute(batch_context())
    manifest = batch(tmp_path, inputs).execute(batch_context(try_number=2))
    assert manifest["this_try"]["from_earlier_tries"] == 10 and manifest["this_try"]["items"] == 0
    assert emu.stats()["submits_total"] == 10
    # A new DAG run starts fresh.
    batch(tmp_path, inputs).execute(batch_context(run_id="scheduled__next"))
    assert emu.stats()["submits_total"] == 20
