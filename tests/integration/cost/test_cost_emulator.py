"""Cost and budgets over real HTTP: an inference operator with the real FalHook against the
emulator, which bills like fal (price table, ``x-fal-billable-units``, tagged billing events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalBudgetExceeded
from fal_provider.hooks.platform import clear_caches
from fal_provider.operators.costing import FalCostReportOperator
from fal_provider.operators.fal import FalInferenceOperator


class StateStore:
    """``context["task_state_store"]``: a per-task-instance store that survives tries."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = value


def context(task_id: str, store: StateStore | None = None) -> dict[str, Any]:
    ti = MagicMock(name="ti", dag_id="cost_it", run_id="manual__it", task_id=task_id, map_index=-1)
    return {"ti": ti, "task_state_store": store or StateStore()}


def pushed(ctx: dict[str, Any], key: str) -> Any:
    return next(c.kwargs["value"] for c in ctx["ti"].xcom_push.call_args_list if c.kwargs["key"] == key)


@pytest.fixture(autouse=True)
def _fresh(fal_emulator_conn: FalEmulator) -> None:
    clear_caches()
    fal_emulator_conn.reset()


def flux(task_id: str, **kwargs: Any) -> FalInferenceOperator:
    return FalInferenceOperator(
        task_id=task_id,
        app_id="fal-ai/flux/schnell",
        arguments={"prompt": "a cat", "num_images": 2},
        deferrable=False,
        poll_interval=0.05,
        **kwargs,
    )


def test_the_cost_record_matches_the_emulators_billing_event_and_carries_the_tags(
    fal_emulator_conn: FalEmulator,
) -> None:
    ctx = context("t2i")
    result = flux("t2i", tags={"team": "design"}).execute(ctx)
    assert len(result["images"]) == 2, "the return value is the result, unchanged"
    record = pushed(ctx, "fal_cost")
    (event,) = fal_emulator_conn.billing()["events"]
    assert record["request_id"] == event["request_id"]
    assert (record["units"], record["unit"], record["unit_price"]) == (2.0, "megapixels", 0.003)
    assert record["cost"] == pytest.approx(event["cost_total"]) == pytest.approx(0.006)
    assert event["tags"] == {"airflow.dag": "cost_it", "airflow.task": "t2i", "team": "design"}
    assert fal_emulator_conn.billed_total(**{"airflow.task": "t2i"}) == pytest.approx(record["cost"])


def test_a_named_budget_stops_the_submit_that_would_pass_it(
    fal_emulator_conn: FalEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__FAL__BUDGET_DATABASE_URL", f"sqlite:///{tmp_path / 'budgets.db'}")
    monkeypatch.setenv("AIRFLOW__FAL__BUDGETS", '{"nightly": 0.01}')
    flux("first", budget="nightly").execute(context("first"))  # estimate ~0.006 fits 0.01
    submits = fal_emulator_conn.stats()["submits_total"]
    with pytest.raises(FalBudgetExceeded, match=r"budget 'nightly' exceeded: spent 0\.006 USD") as caught:
        flux("second", budget="nightly").execute(context("second"))
    assert fal_emulator_conn.stats()["submits_total"] == submits, "nothing was submitted"
    assert (caught.value.spent, caught.value.limit) == (pytest.approx(0.006), 0.01)


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="below 3.3 the spend is kept in a Variable (metadata DB)")
def test_max_cost_continues_across_tries_of_the_task(fal_emulator_conn: FalEmulator) -> None:
    store = StateStore()
    flux("t", max_cost=0.01).execute(context("t", store))
    with pytest.raises(FalBudgetExceeded, match="max_cost of this task"):
        # A later try of the same task instance whose stored request no longer matches its inputs.
        FalInferenceOperator(
            task_id="t",
            app_id="fal-ai/flux/schnell",
            arguments={"prompt": "a dog", "num_images": 2},
            deferrable=False,
            max_cost=0.01,
        ).execute(context("t", store))
    assert len(fal_emulator_conn.billing()["events"]) == 1


def test_the_run_report_can_replace_estimates_by_fals_billing_events(fal_emulator_conn: FalEmulator) -> None:
    ctx = context("t2i")
    flux("t2i").execute(ctx)
    record = pushed(ctx, "fal_cost")
    report_ti = MagicMock(name="ti", task_id="cost")
    report_ti.xcom_pull.side_effect = lambda task_ids, key: record if task_ids == "t2i" else None
    dag = MagicMock(task_ids=["t2i", "cost"])
    total = FalCostReportOperator(task_id="cost", exact=True).execute({"ti": report_ti, "dag": dag})
    assert total["exact"] is True and total["requests"] == 1
    assert total["total"] == pytest.approx(fal_emulator_conn.billed_total())
