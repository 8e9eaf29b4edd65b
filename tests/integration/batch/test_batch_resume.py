"""Resuming a batch from its journal against the emulator: reattach, orphans, expired results,
and a user's kill cancelling the window."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalBatchFailed
from fal_provider.hooks.fal import FalHook
from fal_provider.operators._batch_history import arguments_hash
from fal_provider.operators._batch_inputs import parse_item
from fal_provider.operators.batch import FalBatchOperator
from tests.integration.batch.conftest import batch_context, read_jsonl

APP = "emulator/echo"


def operator(tmp_path: Path, inputs: Any, **kwargs: Any) -> FalBatchOperator:
    params: dict[str, Any] = {
        "task_id": "batch",
        "app_id": APP,
        "inputs": inputs,
        "output_path": f"file://{tmp_path}/out",
        "max_in_flight": 4,
        "poll_interval": 0.05,
        "retry_min_wait": 0.01,
    }
    params.update(kwargs)
    return FalBatchOperator(**params)


def folder(tmp_path: Path) -> Path:
    return tmp_path / "out" / "manual__batch" / "batch"


def dead_try(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    """The journal a killed first try left behind."""
    journal = folder(tmp_path) / "journal"
    journal.mkdir(parents=True)
    (journal / "journal-0001-0000000000000dead.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + '{"i": 9, "e": "subm'  # a torn last line
    )


def intent(index: int, arguments: dict[str, Any]) -> dict[str, Any]:
    item = parse_item(index, arguments, app_id=APP, path="", shared_options={})
    return {
        "i": index,
        "e": "intent",
        "a": 1,
        "fp": item.fingerprint,
        "ah": arguments_hash(arguments),
        "t": time.time() - 1,
    }


def test_reattaches_to_a_request_the_dead_try_submitted(emu: FalEmulator, tmp_path: Path) -> None:
    ref = FalHook().submit(APP, {"n": 0})
    dead_try(tmp_path, [intent(0, {"n": 0}), {"i": 0, "e": "submitted", "a": 1, "rid": ref.request_id}])
    manifest = operator(tmp_path, [{"n": 0}, {"n": 1}]).execute(batch_context(try_number=2))
    assert manifest["counts"] == {"success": 2}
    assert emu.stats()["submits_total"] == 2  # the direct one + item 1; item 0 was not paid again
    lines = {line["index"]: line for line in read_jsonl(manifest["results_path"])}
    assert lines[0]["request_id"] == ref.request_id


def test_orphans_are_adopted_from_request_history_or_resubmitted(emu: FalEmulator, tmp_path: Path) -> None:
    accepted = FalHook().submit(APP, {"n": 0})  # the dead try's POST reached fal; its id was lost
    dead_try(tmp_path, [intent(0, {"n": 0}), intent(1, {"n": 1})])  # item 1's POST never left
    manifest = operator(tmp_path, [{"n": 0}, {"n": 1}]).execute(batch_context(try_number=2))
    assert manifest["counts"] == {"success": 2}
    assert emu.stats()["submits_total"] == 2
    lines = {line["index"]: line for line in read_jsonl(manifest["results_path"])}
    assert lines[0]["request_id"] == accepted.request_id


def test_on_orphan_fail_records_instead_of_paying(
    emu: FalEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_try(tmp_path, [intent(0, {"n": 0})])
    with pytest.raises(FalBatchFailed):
        operator(tmp_path, [{"n": 0}, {"n": 1}], on_orphan="fail").execute(batch_context(try_number=2))
    assert emu.stats()["submits_total"] == 1
    failed = read_jsonl(folder(tmp_path) / "failed_inputs.jsonl")
    assert [record["meta"]["index"] for record in failed] == [0]
    statuses = {line["index"]: line["status"] for line in read_jsonl(folder(tmp_path) / "results.jsonl")}
    assert statuses == {0: "orphaned", 1: "success"}


@pytest.mark.parametrize(("store_io", "outcome"), [(True, "success"), (False, "expired")])
def test_a_result_past_retention_is_recovered_from_history_or_expired(
    emu: FalEmulator, tmp_path: Path, store_io: bool, outcome: str
) -> None:
    emu.configure(result_ttl_s=0.2, large_result_ttl_s=0.2)
    hook = FalHook()
    ref = hook.submit(APP, {"n": 0}, options={"store_io": store_io})
    while hook.get_status(ref).status != "COMPLETED":
        time.sleep(0.05)
    time.sleep(0.3)  # past the (scaled) retention
    dead_try(tmp_path, [intent(0, {"n": 0}), {"i": 0, "e": "submitted", "a": 1, "rid": ref.request_id}])
    op = operator(tmp_path, [{"n": 0}], min_success_ratio=0.0)
    manifest = op.execute(batch_context(try_number=2))
    assert manifest["counts"] == {outcome: 1}
    assert emu.stats()["expired_results"] >= 1 and emu.stats()["submits_total"] == 1
    if outcome == "success":
        assert read_jsonl(manifest["results_path"])[0]["result"] == {"n": 0}


def test_a_users_kill_cancels_every_request_in_flight(emu: FalEmulator, tmp_path: Path) -> None:
    op = operator(tmp_path, [{"n": n, "duration_s": 30} for n in range(20)], max_in_flight=5)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(batch_context())
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while emu.stats()["requests"]["IN_PROGRESS"] + emu.stats()["requests"]["IN_QUEUE"] < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    op.on_kill()
    thread.join(30)
    assert not thread.is_alive()
    stats = emu.stats()
    assert stats["submits_total"] == 5 and stats["cancels"] == 5
    assert stats["requests"]["IN_PROGRESS"] == stats["requests"]["IN_QUEUE"] == 0
    # Released, not failed: clearing the task later submits them again.
    records = [
        json.loads(line)
        for p in (folder(tmp_path) / "journal").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert sum(r["e"] == "released" for r in records) == 5
