"""Budgets per item in a batch, against the emulator's price table: a stop ends submission
cleanly, the unsent inputs are ``not_submitted`` lines, and the ratio rule decides the task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fal_provider import budgets
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalBatchFailed
from fal_provider.hooks.fal import FalHook
from fal_provider.hooks.platform import clear_caches
from fal_provider.operators.batch import FalBatchOperator
from tests.integration.batch.conftest import batch_context, read_jsonl

APP = "fal-ai/flux/schnell"


@pytest.fixture(autouse=True)
def _fresh(emu: FalEmulator) -> None:
    clear_caches()
    emu.reset()


@pytest.fixture
def price(emu: FalEmulator) -> float:
    """The estimate of one call of APP, as the batch will read it."""
    estimate = FalHook().estimate_cost({APP: 1}, estimate_type="historical_api_price")
    value = float(estimate.total_cost)
    assert value > 0
    return value


def batch(tmp_path: Path, n: int = 20, **kwargs: Any) -> FalBatchOperator:
    params: dict[str, Any] = {
        "task_id": "batch",
        "app_id": APP,
        "inputs": [{"prompt": f"cat {i}", "num_images": 1} for i in range(n)],
        "output_path": f"file://{tmp_path}/out",
        "max_in_flight": 3,
        "poll_interval": 0.05,
    }
    params.update(kwargs)
    return FalBatchOperator(**params)


def manifest_of(tmp_path: Path) -> dict[str, Any]:
    (path,) = (tmp_path / "out").glob("*/batch/manifest.json")
    return json.loads(path.read_text())


def test_max_cost_stops_submission_and_records_the_rest_as_not_submitted(
    emu: FalEmulator, tmp_path: Path, price: float
) -> None:
    with pytest.raises(FalBatchFailed, match="5 of 20 inputs succeeded"):
        batch(tmp_path, max_cost=5.5 * price).execute(batch_context())

    assert emu.stats()["submits_total"] == 5  # the 6th POST would pass max_cost: never sent
    manifest = manifest_of(tmp_path)
    assert manifest["counts"] == {"success": 5, "not_submitted": 15}
    assert manifest["cost"]["estimated_spend"] == pytest.approx(5 * price)
    assert "max_cost of this task exceeded" in manifest["cost"]["budget_stop"]
    lines = read_jsonl(manifest["results_path"])
    assert sorted(line["index"] for line in lines) == list(range(20))  # one line per input
    unsent = [line for line in lines if line["status"] == "not_submitted"]
    assert len(unsent) == 15 and all(line["request_id"] is None for line in unsent)
    assert len(read_jsonl(manifest["failed_inputs_path"])) == 15  # ready to be fed back in


def test_the_ratio_rule_lets_a_budget_stopped_batch_succeed(
    emu: FalEmulator, tmp_path: Path, price: float
) -> None:
    manifest = batch(tmp_path, max_cost=5.5 * price, min_success_ratio=0.25).execute(batch_context())
    assert manifest["counts"] == {"success": 5, "not_submitted": 15}
    assert emu.stats()["submits_total"] == 5


def test_max_cost_counts_earlier_tries_and_a_higher_limit_sends_only_the_rest(
    emu: FalEmulator, tmp_path: Path, price: float
) -> None:
    with pytest.raises(FalBatchFailed):
        batch(tmp_path, max_cost=5.5 * price).execute(batch_context(try_number=1))
    with pytest.raises(FalBatchFailed):  # same limit: the journal already counts 5 calls
        batch(tmp_path, max_cost=5.5 * price).execute(batch_context(try_number=2))
    assert emu.stats()["submits_total"] == 5

    manifest = batch(tmp_path, max_cost=20.5 * price).execute(batch_context(try_number=3))
    assert manifest["counts"] == {"success": 20}
    assert emu.stats()["submits_total"] == 20  # 15 more, none twice


def test_a_named_budget_is_reserved_per_item_and_settled_once(
    emu: FalEmulator, tmp_path: Path, price: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    monkeypatch.setenv("AIRFLOW__FAL__BUDGET_DATABASE_URL", url)
    op = batch(tmp_path, n=10, budget="nightly", budget_limit=3.5 * price, min_success_ratio=0.3)
    manifest = op.execute(batch_context())

    assert manifest["counts"] == {"success": 3, "not_submitted": 7}
    assert emu.stats()["submits_total"] == 3
    state = budgets.ledger(url).state("nightly")
    assert state.spent == pytest.approx(3 * price) and state.reserved == pytest.approx(0.0)
    assert "budget 'nightly' exceeded" in manifest["cost"]["budget_stop"]


def test_cached_inputs_make_no_request_and_cost_nothing(
    emu: FalEmulator, tmp_path: Path, price: float
) -> None:
    cache = {"cache": True, "cache_path": str(tmp_path / "cache")}
    first = batch(tmp_path, n=6, **cache).execute(batch_context(run_id="manual__first"))
    assert first["cache"] == {"hits": 0, "stored": 6}
    assert emu.stats()["submits_total"] == 6

    # A new run over the 6 cached inputs and 4 new ones, with money for only the 4 new ones: the
    # hits are neither sent nor counted against max_cost.
    op = batch(tmp_path, n=10, max_cost=4.5 * price, **cache)
    manifest = op.execute(batch_context(run_id="manual__second"))

    assert manifest["counts"] == {"success": 10}
    assert manifest["cache"] == {"hits": 6, "stored": 4}
    assert emu.stats()["submits_total"] == 10  # 4 more
    assert manifest["cost"]["estimated_spend"] == pytest.approx(4 * price)
    lines = {line["index"]: line for line in read_jsonl(manifest["results_path"])}
    assert all(lines[i].get("cached") for i in range(6))
    assert not any(lines[i].get("cached") for i in range(6, 10))
    paid = {line["index"]: line for line in read_jsonl(first["results_path"])}
    assert all(lines[i]["result"] == paid[i]["result"] for i in range(6))  # the stored result
    assert all(lines[i]["request_id"] == paid[i]["request_id"] for i in range(6))


def test_the_progress_line_says_what_was_spent_so_far(tmp_path: Path, price: float) -> None:
    op = batch(tmp_path, n=4, max_cost=10 * price, progress_interval=0.01)
    seen: list[str] = []
    original = op.log.info

    def info(message: str, *args: Any, **kwargs: Any) -> None:
        seen.append(message % args if args else message)
        original(message, *args, **kwargs)

    op.log.info = info  # type: ignore[method-assign]
    op.execute(batch_context())
    progress = [line for line in seen if line.startswith("fal batch: ")]
    assert progress and "USD spent" in progress[-1]


def test_strict_budget_without_a_price_sends_nothing_and_looks_the_price_up_once(
    emu: FalEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[Any] = []

    def no_price(self: FalHook, *args: Any, **kwargs: Any) -> Any:
        lookups.append(args)
        raise RuntimeError("no price for this endpoint")

    monkeypatch.setattr(FalHook, "estimate_cost", no_price)
    op = batch(tmp_path, n=12, max_cost=1.0, strict_budget=True, max_in_flight=6)
    with pytest.raises(FalBatchFailed, match="0 of 12 inputs succeeded"):
        op.execute(batch_context())

    assert emu.stats()["submits_total"] == 0
    assert len(lookups) == 1  # not one per item of the first window
    assert manifest_of(tmp_path)["counts"] == {"not_submitted": 12}
    assert "strict_budget" in manifest_of(tmp_path)["cost"]["budget_stop"]
