"""Operators and money: tags on every submit, the cost record in XCom, max_cost across tries,
named budgets, and the DAG run's total. The hook is a FalHook autospec."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider._compat import TaskDeferred
from fal_provider.exceptions import FalBudgetExceeded, FalInputError, FalPermanentError
from fal_provider.hooks.platform import CostEstimate, Price
from fal_provider.operators import lifecycle as costing
from fal_provider.operators.costing import FalCostReportOperator
from fal_provider.operators.fal import FalInferenceOperator, FalSubmitOperator
from tests.unit.operators.fakes import (
    APP,
    FakeStateStore,
    done,
    install_hook,
    make_context,
    make_hook,
    make_ref,
    pushed,
    queued,
)

PRICE = Price(APP, 0.003, "megapixels", "USD")


def priced_hook(units: float | None = 2.0, estimate: float | None = 0.006, **kwargs: Any) -> MagicMock:
    hook = make_hook(**kwargs)
    hook.billable_units = units
    hook.get_pricing.return_value = {APP: PRICE}
    if estimate is not None:
        hook.estimate_cost.side_effect = None
        hook.estimate_cost.return_value = CostEstimate("historical_api_price", estimate, "USD")
    return hook


def inference(hook: MagicMock, **kwargs: Any) -> FalInferenceOperator:
    kwargs.setdefault("deferrable", False)
    op = FalInferenceOperator(
        task_id="t", app_id=APP, arguments={"prompt": "a cat"}, poll_interval=0.01, **kwargs
    )
    install_hook(op, hook)
    return op


def test_a_result_pushes_its_cost_record_and_returns_the_result_unchanged() -> None:
    hook = priced_hook(units=2.0, result={"images": [{"url": "http://x/a.png"}]})
    context = make_context()
    assert inference(hook).execute(context) == {"images": [{"url": "http://x/a.png"}]}
    record = pushed(context)["fal_cost"]
    assert record["cost"] == pytest.approx(0.006)
    assert (record["units"], record["unit"], record["request_id"], record["exact"]) == (
        2.0,
        "megapixels",
        "req-1",
        False,
    )


def test_a_pricing_outage_leaves_the_cost_unknown_and_the_task_successful() -> None:
    hook = priced_hook(units=1.0)
    hook.get_pricing.side_effect = RuntimeError("platform down")
    context = make_context()
    inference(hook).execute(context)
    record = pushed(context)["fal_cost"]
    assert record["cost"] is None and "pricing unavailable" in record["reason"]


def test_every_submit_carries_dag_and_task_tags_and_the_users_tags() -> None:
    hook = priced_hook()
    inference(hook, tags={"team": "design"}).execute(make_context())
    headers = hook.submit.call_args.kwargs["headers"]
    assert headers == {"X-Fal-Tags": "airflow.dag=d,airflow.task=t,team=design"}


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"tags": {"fal.x": "1"}}, "reserved by fal"),
        ({"max_cost": -1}, "max_cost must be"),
        ({"max_cost": "a lot"}, "max_cost must be"),
        ({"budget": "night-ly"}, "budget must be an identifier"),
        ({"budget_limit": 1.0}, "budget_limit needs budget"),
        ({"budget": "n", "budget_scope": "week"}, "budget_scope must be"),
    ],
)
def test_bad_money_parameters_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(FalInputError, match=problem):
        FalInferenceOperator(task_id="t", app_id=APP, arguments={}, **kwargs)


def test_max_cost_counts_every_try_and_refuses_before_submitting() -> None:
    store = FakeStateStore()
    first = priced_hook(estimate=0.006, statuses=[queued()])
    with pytest.raises(TaskDeferred):
        inference(first, max_cost=0.01, deferrable=True).execute(make_context(store))
    first.submit.assert_called_once()

    # Try 2: try 1's request failed, so it would resubmit; 0.006 reserved + 0.006 > 0.01.
    second = priced_hook(estimate=0.006, statuses=[done(error="boom", error_type="runner_disconnected")])
    with pytest.raises(FalBudgetExceeded, match=r"spent 0.006 USD.*limit 0.01 USD.*raise max_cost") as caught:
        inference(second, max_cost=0.01, deferrable=True).execute(make_context(store))
    second.submit.assert_not_called()
    assert isinstance(caught.value, FalPermanentError)


def test_the_actual_cost_replaces_the_estimate_in_the_tasks_spend() -> None:
    store = FakeStateStore()
    context = make_context(store)
    inference(priced_hook(units=1.0, estimate=0.009), max_cost=0.01).execute(context)
    # Actual 0.003 (1 unit) replaced the 0.009 estimate, so a further 0.006 fits in 0.01.
    second = priced_hook(estimate=0.006)
    second.submit.return_value = make_ref("req-2")
    second.get_status.side_effect = [done(error="boom", error_type="runner_disconnected"), done()]
    inference(second, max_cost=0.01).execute(make_context(store))
    second.submit.assert_called_once()


def test_strict_budgets_refuse_a_request_that_cannot_be_priced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(costing, "_LAST_COST", {})  # nothing observed in this process yet
    hook = priced_hook(estimate=None)  # estimate_cost raises (fakes' default)
    with pytest.raises(FalPermanentError, match="strict_budget"):
        inference(hook, max_cost=1.0, strict_budget=True).execute(make_context())
    hook.submit.assert_not_called()
    lenient = priced_hook(estimate=None)
    inference(lenient, max_cost=1.0).execute(make_context())
    lenient.submit.assert_called_once()


def test_without_a_fal_estimate_the_last_observed_cost_is_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(costing, "_LAST_COST", {})
    store = FakeStateStore()
    inference(priced_hook(units=3.0, estimate=None), max_cost=0.01).execute(make_context(store))  # cost 0.009
    again = priced_hook(estimate=None)
    again.submit.return_value = make_ref("req-2")
    again.get_status.side_effect = [done(error="boom", error_type="runner_disconnected"), done()]
    with pytest.raises(FalBudgetExceeded, match=r"needs ~0\.009 USD"):
        inference(again, max_cost=0.01).execute(make_context(store))
    again.submit.assert_not_called()


def test_a_named_budget_reserves_before_submitting_and_settles_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fal_provider import budgets

    url = f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.setenv("AIRFLOW__FAL__BUDGET_DATABASE_URL", url)
    inference(priced_hook(units=1.0, estimate=0.005), budget="nightly", budget_limit=0.008).execute(
        make_context()
    )
    state = budgets.ledger(url).state("nightly")
    assert (state.spent, state.reserved) == (pytest.approx(0.003), pytest.approx(0.0))

    refused = priced_hook(estimate=0.006)
    with pytest.raises(FalBudgetExceeded, match=r"budget 'nightly' exceeded: spent 0.003 USD"):
        inference(refused, budget="nightly", budget_limit=0.008).execute(make_context())
    refused.submit.assert_not_called()


def test_a_submit_only_task_counts_its_estimate_as_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fal_provider import budgets

    url = f"sqlite:///{tmp_path / 's.db'}"
    monkeypatch.setenv("AIRFLOW__FAL__BUDGET_DATABASE_URL", url)
    op = FalSubmitOperator(task_id="t", app_id=APP, arguments={}, budget="adhoc", budget_limit=1.0)
    install_hook(op, priced_hook(estimate=0.25))
    op.execute(make_context())
    state = budgets.ledger(url).state("adhoc")
    assert (state.spent, state.reserved) == (0.25, 0.0)


def test_the_cost_report_sums_the_runs_records_mapped_tasks_included() -> None:
    records = {
        "t2i": {
            "app_id": APP,
            "request_id": "a",
            "units": 1,
            "unit": "megapixels",
            "unit_price": 0.003,
            "currency": "USD",
            "cost": 0.003,
            "exact": False,
            "reason": None,
        },
        "fanout": [
            {
                "app_id": "x/y",
                "request_id": f"m{i}",
                "units": 1,
                "unit": "requests",
                "unit_price": 0.001,
                "currency": "USD",
                "cost": 0.001,
                "exact": False,
                "reason": None,
            }
            for i in range(3)
        ],
        "plain": None,
    }
    ti = MagicMock(name="ti", task_id="report")
    ti.xcom_pull.side_effect = lambda task_ids, key: records[task_ids]
    dag = MagicMock(task_ids=["t2i", "fanout", "plain", "report"])
    total = FalCostReportOperator(task_id="report").execute({"ti": ti, "dag": dag})
    assert total["total"] == pytest.approx(0.006)
    assert (total["requests"], total["unknown"], total["currency"]) == (4, 0, "USD")


def test_a_named_budget_without_limit_or_database_fails_before_any_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIRFLOW__FAL__BUDGETS", raising=False)
    monkeypatch.setenv("AIRFLOW__FAL__BUDGET_DATABASE_URL", "sqlite://")
    hook = priced_hook()
    with pytest.raises(FalInputError, match="Budget 'nightly' has no limit"):
        inference(hook, budget="nightly").execute(make_context())
    monkeypatch.delenv("AIRFLOW__FAL__BUDGET_DATABASE_URL")
    with pytest.raises(FalInputError, match="budget_database_url"):
        inference(hook, budget="nightly", budget_limit=1.0).execute(make_context())
    assert hook.estimate_cost.call_count == hook.submit.call_count == hook.validate_arguments.call_count == 0
