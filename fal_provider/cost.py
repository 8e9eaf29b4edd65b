"""What a fal request cost, and the request tags fal reports usage against.

fal bills by the units an app reports on its result fetch (``x-fal-billable-units``: images,
megapixels, seconds, requests ...) times the endpoint's unit price. The provider knows the units
from the result fetch and the list price from the Platform API (cached per process), so every
finished request gets a :class:`CostRecord`:

* ``exact=True`` when the figure is fal's own billing event (what was charged, after discounts);
* ``exact=False`` (an estimate) when it is units x list price: fal may apply account discounts;
* ``cost=None`` (unknown) with a ``reason`` when no units were sent or no price could be read.
  A failing price lookup never fails an inference; only the cost is then unknown.

Operators log :meth:`CostRecord.describe` once per request, push :meth:`CostRecord.to_xcom` under
:data:`XCOM_KEY` (the task's return value is unchanged) and a DAG run's records add up with
:func:`total_of`.

Request tags (``X-Fal-Tags: key=value,key=value``) let fal's own usage reports split spend by DAG
and task. fal's gateway never fails a request for a bad tag, it silently drops the tag, so the
rules are checked here, before anything is sent (:func:`check_tags`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fal_provider.exceptions import FalInputError

__all__ = [
    "TAGS_HEADER",
    "XCOM_KEY",
    "CostRecord",
    "CostTotal",
    "check_budget_name",
    "check_max_cost",
    "check_tags",
    "cost_record",
    "reconciled",
    "request_tags",
    "tags_header",
    "total_of",
]

#: The XCom key of a task's cost records (a list: one per request the task paid for).
XCOM_KEY = "fal_cost"
TAGS_HEADER = "X-Fal-Tags"

#: fal's tag rules (request-tags docs; the same limits fal's own clients enforce).
MAX_TAG_PAIRS = 10
MAX_TAG_KEY_LENGTH = 64
MAX_TAG_VALUE_LENGTH = 256
MAX_TAGS_BYTES = 1024
RESERVED_TAG_PREFIX = "fal."
#: Set by the provider on every request; a user tag may not replace them.
DAG_TAG = "airflow.dag"
TASK_TAG = "airflow.task"
_TAG_KEY = re.compile(r"[a-z0-9._-]+")
_BUDGET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class CostRecord:
    """The cost of one fal request; JSON-safe through :meth:`to_xcom`."""

    app_id: str
    request_id: str
    units: float | None
    unit: str | None
    unit_price: float | None
    currency: str | None
    cost: float | None
    exact: bool = False
    reason: str | None = None

    def describe(self) -> str:
        """One log line: ``fal-ai/flux/schnell 1 megapixels x 0.003 USD = 0.003 USD (estimate)``."""
        if self.cost is None:
            return (
                f"{self.app_id} request {self.request_id}: cost unknown ({self.reason or 'no reason given'})"
            )
        quantity = f"{_num(self.units)} {self.unit}" if self.units is not None else "billed"
        how = "billed" if self.exact else "estimate: units x list price"
        return (
            f"{self.app_id} {quantity} × {_num(self.unit_price)} {self.currency} = "  # noqa: RUF001
            f"{_num(self.cost)} {self.currency} ({how}; request {self.request_id})"
        )

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any]) -> CostRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in names})


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.10g}"


def cost_record(
    app_id: str,
    request_id: str,
    units: float | None,
    price: Any,
    *,
    reason: str | None = None,
) -> CostRecord:
    """The record of a finished request from its billed ``units`` and a ``Price`` (or ``None``).

    ``price`` is a :class:`fal_provider.platform.Price` (``unit_price``, ``unit``, ``currency``).
    Without units or a price the cost is unknown and ``reason`` (or a default) says why.
    """
    unit = getattr(price, "unit", None)
    unit_price = getattr(price, "unit_price", None)
    currency = getattr(price, "currency", None)
    if units is None or price is None or unit_price is None:
        why = reason or ("fal sent no billable units" if units is None else "no unit price for this app")
        return CostRecord(app_id, request_id, units, unit, unit_price, currency, None, reason=why)
    return CostRecord(app_id, request_id, units, unit, unit_price, currency, units * float(unit_price))


def reconciled(record: CostRecord, event: Any) -> CostRecord:
    """``record`` with fal's charged figure from a billing event (``output_units``, ``unit_price``,
    ``cost_total``, ``currency``): exact, after any account discount."""
    if getattr(event, "cost_total", None) is None:
        return record
    units = event.output_units if event.output_units is not None else record.units
    price = event.unit_price if event.unit_price is not None else record.unit_price
    return CostRecord(
        record.app_id,
        record.request_id,
        units,
        record.unit,
        price,
        event.currency,
        float(event.cost_total),
        exact=True,
    )


@dataclass(frozen=True)
class CostTotal:
    """What a set of requests cost: the known part, and how many requests had no figure."""

    total: float
    currency: str
    requests: int
    unknown: int
    exact: bool

    def describe(self) -> str:
        unknown = f", {self.unknown} of unknown cost" if self.unknown else ""
        how = "billed" if self.exact else "estimate"
        return f"{self.requests} fal requests cost {self.total:.10g} {self.currency} ({how}{unknown})"

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def total_of(records: Iterable[CostRecord | Mapping[str, Any]]) -> CostTotal:
    """Sum records, each request once (a request fetched by two tries counts once)."""
    seen: dict[str, CostRecord] = {}
    for item in records:
        record = item if isinstance(item, CostRecord) else CostRecord.from_xcom(item)
        seen[record.request_id] = record
    known = [r for r in seen.values() if r.cost is not None]
    currencies = {r.currency for r in known}
    if len(currencies) > 1:
        raise ValueError(f"Cannot add costs in several currencies: {sorted(map(str, currencies))}")
    return CostTotal(
        total=sum(r.cost or 0.0 for r in known),
        currency=next(iter(currencies), None) or "USD",
        requests=len(seen),
        unknown=len(seen) - len(known),
        exact=bool(known) and all(r.exact for r in known),
    )


# -- request tags -------------------------------------------------------------------------------


def check_tags(tags: Any, *, where: str = "tags") -> dict[str, str]:
    """User tags checked by fal's rules; keys lowercased and values stripped, as fal stores them.

    The provider's own ``airflow.dag`` / ``airflow.task`` count towards the 10 pairs and 1 KB, and
    cannot be set by the user (they are what fal's reports split by).
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise FalInputError(f"{where} must be a dict of tag names to values, got {type(tags).__name__}")
    checked: dict[str, str] = {}
    for raw_key, raw_value in tags.items():
        if (
            not isinstance(raw_key, str)
            or not isinstance(raw_value, str | int | float)
            or isinstance(raw_value, bool)
        ):
            raise FalInputError(
                f"{where}: tag keys and values must be strings, got {raw_key!r}: {raw_value!r}"
            )
        key, value = raw_key.strip().lower(), str(raw_value).strip()
        _check_tag(key, value, where)
        if key in (DAG_TAG, TASK_TAG):
            raise FalInputError(f"{where}: {key!r} is set by the provider on every request; use another key")
        checked[key] = value
    if len(checked) > MAX_TAG_PAIRS - 2:
        raise FalInputError(
            f"{where}: at most {MAX_TAG_PAIRS - 2} tags (fal takes {MAX_TAG_PAIRS} pairs and the provider "
            f"sets {DAG_TAG} and {TASK_TAG}), got {len(checked)}"
        )
    return checked


def _check_tag(key: str, value: str, where: str) -> None:
    if not _TAG_KEY.fullmatch(key):
        raise FalInputError(f"{where}: tag key {key!r} must be non-empty and only a-z, 0-9, '.', '_' or '-'")
    if len(key) > MAX_TAG_KEY_LENGTH:
        raise FalInputError(f"{where}: tag key {key[:20]!r}... is over {MAX_TAG_KEY_LENGTH} characters")
    if key.startswith(RESERVED_TAG_PREFIX):
        raise FalInputError(
            f"{where}: tag keys starting with {RESERVED_TAG_PREFIX!r} are reserved by fal ({key!r})"
        )
    if not all(c.isascii() and c.isprintable() and c != "," for c in value):
        raise FalInputError(
            f"{where}: the value of tag {key!r} must be printable ASCII without ',' (fal separates tags with commas)"
        )
    if len(value) > MAX_TAG_VALUE_LENGTH:
        raise FalInputError(f"{where}: the value of tag {key!r} is over {MAX_TAG_VALUE_LENGTH} characters")


def request_tags(
    dag_id: str | None, task_id: str | None, tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The tags every request of a task carries: ``airflow.dag``, ``airflow.task`` and the user's.

    Dag and task ids are Airflow keys (letters, digits, '.', '_', '-'), always valid tag values;
    outside a task (no ids) only the user's tags are sent.
    """
    own = {DAG_TAG: dag_id, TASK_TAG: task_id}
    pairs = {**{k: str(v) for k, v in own.items() if v}, **check_tags(tags)}
    for key, value in pairs.items():
        _check_tag(key, value, "tags")
    size = sum(len(k) + len(v) for k, v in pairs.items())
    if size > MAX_TAGS_BYTES:
        raise FalInputError(
            f"tags: keys and values add up to {size} bytes with {DAG_TAG}/{TASK_TAG}; fal takes at most "
            f"{MAX_TAGS_BYTES}. Shorten or drop some tags."
        )
    return pairs


def tags_header(tags: Mapping[str, str]) -> str:
    """The ``X-Fal-Tags`` value: ``key=value`` pairs joined by commas."""
    return ",".join(f"{key}={value}" for key, value in tags.items())


# -- budget parameters --------------------------------------------------------------------------


def check_max_cost(value: Any, name: str = "max_cost") -> float | None:
    """A non-negative, finite amount in the price currency (``None``: no limit)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FalInputError(f"{name} must be a number (USD), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FalInputError(f"{name} must be a number (USD), got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise FalInputError(f"{name} must be a finite amount >= 0 (USD), got {value!r}")
    return float(value)


def check_budget_name(value: Any) -> str | None:
    """A budget name is an identifier (letters, digits, '_'; at most 64), as config keys are."""
    if value is None:
        return None
    if not isinstance(value, str) or not _BUDGET_NAME.fullmatch(value):
        raise FalInputError(
            f"budget must be an identifier (a letter or '_', then letters, digits or '_', at most 64), "
            f"got {value!r}; e.g. budget='nightly'"
        )
    return value
