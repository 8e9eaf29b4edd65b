"""The named-budget ledger on a real database (SQLite file): reserve, settle, refuse, race."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fal_provider import budgets
from fal_provider.budgets import BudgetLedger, budget_limit
from fal_provider.exceptions import FalBudgetExceeded, FalInputError, FalPermanentError


@pytest.fixture
def ledger(tmp_path: Path) -> BudgetLedger:
    return BudgetLedger(f"sqlite:///{tmp_path / 'budgets.db'}")


def test_reservations_count_until_settled_with_the_actual_cost(ledger: BudgetLedger) -> None:
    ledger.reserve("nightly", 0.4, 1.0)
    ledger.reserve("nightly", 0.4, 1.0)
    with pytest.raises(FalBudgetExceeded) as caught:
        ledger.reserve("nightly", 0.4, 1.0)
    err = caught.value
    assert (err.spent, err.reserved, err.limit) == (0.0, pytest.approx(0.8), 1.0)
    assert isinstance(err, FalPermanentError), "a retry meets the same limit: no retries spent"
    assert "spent 0 USD, reserved 0.8 USD" in str(err) and "limit 1 USD" in str(err)
    assert "budget_limit=" in str(err) and "[fal] budgets" in str(err), "says how to raise it"

    state = ledger.settle("nightly", 0.4, 0.1)  # the first result cost less than estimated
    assert (state.spent, state.reserved) == (pytest.approx(0.1), pytest.approx(0.4))
    ledger.reserve("nightly", 0.4, 1.0)  # now it fits
    ledger.settle("nightly", 0.4, 0.0)  # a submit fal refused releases its reservation
    assert ledger.state("nightly").reserved == pytest.approx(0.4)


def test_budgets_are_separate_by_name(ledger: BudgetLedger) -> None:
    ledger.reserve("a", 1.0, 1.0)
    ledger.reserve("b", 1.0, 1.0)
    assert ledger.state("a").reserved == ledger.state("b").reserved == 1.0


def test_of_ten_racing_reservations_only_those_that_fit_pass(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    BudgetLedger(url)  # the table exists before the race
    start = threading.Barrier(10)
    passed: list[int] = []
    refused: list[int] = []

    def reserve(i: int) -> None:
        mine = BudgetLedger(url)  # one engine per "task"
        start.wait()
        try:
            mine.reserve("shared", 0.0001, 0.00045)
            passed.append(i)
        except FalBudgetExceeded:
            refused.append(i)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(passed), len(refused)) == (4, 6)


def test_limits_come_from_the_operator_or_fal_budgets_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert budget_limit("nightly", 2.5) == 2.5
    monkeypatch.setenv("AIRFLOW__FAL__BUDGETS", '{"nightly": 5}')
    assert budget_limit("nightly", None) == 5.0
    with pytest.raises(FalInputError, match="Budget 'weekly' has no limit"):
        budget_limit("weekly", None)
    monkeypatch.setenv("AIRFLOW__FAL__BUDGETS", "nightly=5")
    with pytest.raises(FalInputError, match="JSON object"):
        budget_limit("nightly", None)


def test_a_named_budget_without_a_database_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__FAL__BUDGET_DATABASE_URL", raising=False)
    with pytest.raises(FalInputError, match=r"\[fal\] budget_database_url"):
        budgets.ledger()
