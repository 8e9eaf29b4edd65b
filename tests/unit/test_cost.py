"""Cost records, their sum, fal's tag rules and the budget parameters (pure logic)."""

from __future__ import annotations

import pytest

from fal_provider.exceptions import FalInputError, FalPermanentError
from fal_provider.hooks.platform import CostRecord, Price, cost_record, total_of
from fal_provider.models import check_budget_name, check_max_cost, check_tags, request_tags, tags_header
from fal_provider.operators.lifecycle import spent_of

SCHNELL = Price("fal-ai/flux/schnell", 0.003, "megapixels", "USD")


def test_a_record_is_units_times_the_list_price_flagged_as_an_estimate() -> None:
    record = cost_record("fal-ai/flux/schnell", "r1", 2.0, SCHNELL)
    assert record.cost == pytest.approx(0.006)
    assert (record.unit, record.unit_price, record.currency, record.exact) == (
        "megapixels",
        0.003,
        "USD",
        False,
    )
    assert record.describe().startswith("fal-ai/flux/schnell 2 megapixels × 0.003 USD = 0.006 USD (estimate")  # noqa: RUF001
    assert CostRecord.from_xcom(record.to_xcom()) == record


@pytest.mark.parametrize(
    ("units", "price", "reason"),
    [(None, SCHNELL, "fal sent no billable units"), (1.0, None, "no unit price for this app")],
)
def test_without_units_or_price_the_cost_is_unknown_with_a_reason(
    units: float | None, price: Price | None, reason: str
) -> None:
    record = cost_record("fal-ai/flux/schnell", "r1", units, price)
    assert record.cost is None
    assert record.reason == reason
    assert reason in record.describe()


def test_a_total_counts_each_request_once_and_reports_the_unknown_ones() -> None:
    a = cost_record("a/b", "r1", 1.0, SCHNELL)
    b = cost_record("a/b", "r2", 3.0, SCHNELL)
    unknown = cost_record("a/b", "r3", None, SCHNELL)
    total = total_of([a.to_xcom(), b, a, unknown])
    assert total.total == pytest.approx(0.012)
    assert (total.requests, total.unknown, total.currency, total.exact) == (3, 1, "USD", False)
    assert "1 of unknown cost" in total.describe()
    assert total_of([]).total == 0


def test_costs_carry_no_float_noise_into_xcom_and_reports() -> None:
    """0.1 + 0.2 is 0.30000000000000004 in floats; a cost report must say 0.3."""
    price = Price("a/b", 0.1, "images", "USD")
    records = [cost_record("a/b", "r1", 1.0, price), cost_record("a/b", "r2", 2.0, price)]
    assert records[1].cost == 0.2
    assert total_of(records).total == 0.3
    assert cost_record("a/b", "r3", 3.0, Price("a/b", 0.0012121, "images", "USD")).cost == 0.0036363
    assert spent_of({"r1": {"cost": 0.1}, "r2": {"estimate": 0.2}}) == 0.3


def test_every_request_is_tagged_with_dag_and_task_plus_the_users_tags() -> None:
    tags = request_tags("nightly_dag", "render.upscale", {"Team": " design ", "env": "prod"})
    assert tags == {
        "airflow.dag": "nightly_dag",
        "airflow.task": "render.upscale",
        "team": "design",
        "env": "prod",
    }
    assert tags_header(tags) == "airflow.dag=nightly_dag,airflow.task=render.upscale,team=design,env=prod"


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ({f"k{i}": "v" for i in range(9)}, "at most 8 tags"),
        ({"bad key": "v"}, "must be non-empty and only a-z"),
        ({"k" * 65: "v"}, "over 64 characters"),
        ({"fal.cost": "v"}, "reserved by fal"),
        ({"team": "a,b"}, "without ','"),
        ({"team": "caf\u00e9"}, "printable ASCII"),
        ({"team": "v" * 257}, "over 256 characters"),
        ({"airflow.dag": "other"}, "set by the provider"),
        ({"team": None}, "must be strings"),
        ("team=design", "must be a dict"),
    ],
)
def test_tags_breaking_fals_rules_are_refused_locally(tags: object, problem: str) -> None:
    with pytest.raises(FalInputError, match=problem):
        check_tags(tags)


def test_tags_over_one_kilobyte_in_total_are_refused() -> None:
    tags = {f"k{i}": "v" * 200 for i in range(5)}  # each pair fine, 1010 bytes with the provider's two
    with pytest.raises(FalInputError, match="at most 1024"):
        request_tags("d" * 20, "t" * 20, tags)


@pytest.mark.parametrize("value", [-0.01, "lots", float("nan"), float("inf"), True, [1]])
def test_max_cost_must_be_a_non_negative_number(value: object) -> None:
    with pytest.raises(FalInputError, match="max_cost must be"):
        check_max_cost(value)


def test_max_cost_accepts_numbers_and_numeric_strings() -> None:
    assert check_max_cost(0) == 0.0
    assert check_max_cost("0.5") == 0.5
    assert check_max_cost(None) is None


@pytest.mark.parametrize("name", ["", "9lives", "night-ly", "a b", "x" * 65, 5])
def test_a_budget_name_must_be_an_identifier(name: object) -> None:
    with pytest.raises(FalInputError, match="budget must be an identifier"):
        check_budget_name(name)
    assert issubclass(FalInputError, FalPermanentError)


def test_budget_names_that_are_identifiers_pass() -> None:
    assert check_budget_name("nightly_2") == "nightly_2"
