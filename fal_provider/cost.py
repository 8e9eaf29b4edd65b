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

What a submitting task does about money also lives here, so cost has one home. Before each submit
(:meth:`CostGuard.before_submit`) the request's estimated cost (fal's historical price per call of
the endpoint, else the last cost this process observed for it) is checked against ``max_cost`` (this
task, across all its tries) and reserved in a named budget (:mod:`fal_provider.budgets`); past a
limit the task fails with a permanent :class:`~fal_provider.exceptions.FalBudgetExceeded` and nothing
is submitted. When no estimate can be had, the check lets the request through with a warning, unless
``strict_budget=True``. After the result, :func:`record_cost` logs the record, pushes it to XCom,
counts it in Airflow metrics, adds it to the task's spend and settles the named budget. The task's
spend lives where reattach keeps the request (``task_state_store`` on Airflow >= 3.3, else a Variable
keyed by dag / task / map index and the run), keyed by request id, so a retry continues the count and
a request fetched again by a later try is counted once. The run's report is
:class:`~fal_provider.operators.costing.FalCostReportOperator`.

Request tags (``X-Fal-Tags: key=value,key=value``) let fal's own usage reports split spend by DAG
and task. fal's gateway never fails a request for a bad tag, it silently drops the tag, so the
rules are checked here, before anything is sent (:func:`check_tags`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from fal_provider import budgets
from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.exceptions import FalInputError, FalPermanentError

log = logging.getLogger(__name__)

__all__ = [
    "TAGS_HEADER",
    "XCOM_KEY",
    "CostGuard",
    "CostRecord",
    "CostSettings",
    "CostTotal",
    "check_budget_name",
    "check_max_cost",
    "check_tags",
    "cost_record",
    "endpoint_of",
    "reconciled",
    "record_cost",
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


#: Decimal places a cost is kept to: far below any price fal quotes, and enough to drop the binary
#: noise of float products and sums (``0.1 + 0.2``) that would otherwise show in XCom and reports.
MONEY_PLACES = 12


def money(value: float) -> float:
    """``value`` rounded to :data:`MONEY_PLACES`, as every cost figure of the provider is."""
    return round(value, MONEY_PLACES)


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

    ``price`` is a :class:`fal_provider.hooks.platform.Price` (``unit_price``, ``unit``, ``currency``).
    Without units or a price the cost is unknown and ``reason`` (or a default) says why.
    """
    unit = getattr(price, "unit", None)
    unit_price = getattr(price, "unit_price", None)
    currency = getattr(price, "currency", None)
    if units is None or price is None or unit_price is None:
        why = reason or ("fal sent no billable units" if units is None else "no unit price for this app")
        return CostRecord(app_id, request_id, units, unit, unit_price, currency, None, reason=why)
    return CostRecord(app_id, request_id, units, unit, unit_price, currency, money(units * float(unit_price)))


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
        money(float(event.cost_total)),
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
        total=money(math.fsum(r.cost or 0.0 for r in known)),
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


# --------------------------------------------------------------------------- a submitting task's money

SPEND_KEY = "fal_spend"
VARIABLE_PREFIX = "fal_provider.spend."
BUDGET_SCOPES = ("global", "dag_run")
#: Cost last observed per endpoint in this process: the estimate when fal has no historical price.
_LAST_COST: dict[str, float] = {}
_WARNED: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


@dataclass(frozen=True)
class CostSettings:
    """The money parameters of a submitting operator, checked when it is built."""

    tags: dict[str, str]
    max_cost: float | None = None
    budget: str | None = None
    budget_limit: float | None = None
    budget_scope: str = "global"
    strict_budget: bool = False

    @classmethod
    def build(
        cls,
        *,
        tags: Any = None,
        max_cost: Any = None,
        budget: Any = None,
        budget_limit: Any = None,
        budget_scope: Any = "global",
        strict_budget: Any = False,
    ) -> CostSettings:
        if budget_scope not in BUDGET_SCOPES:
            raise FalInputError(f"budget_scope must be one of {BUDGET_SCOPES}, got {budget_scope!r}")
        if not isinstance(strict_budget, bool):
            raise FalInputError(f"strict_budget must be True or False, got {strict_budget!r}")
        limit = check_max_cost(budget_limit, "budget_limit")
        name = check_budget_name(budget)
        if limit is not None and name is None:
            raise FalInputError("budget_limit needs budget='<name>' (the budget it limits)")
        return cls(check_tags(tags), check_max_cost(max_cost), name, limit, str(budget_scope), strict_budget)

    @property
    def limited(self) -> bool:
        return self.max_cost is not None or self.budget is not None


def endpoint_of(app_id: str, path: str = "") -> str:
    """The endpoint id prices are keyed by: the app id plus its sub-path."""
    return f"{app_id.strip('/')}/{path.strip('/')}" if path and path.strip("/") else app_id.strip("/")


class SpendStore:
    """The task instance's requests and their cost, kept across tries (see the module docstring)."""

    def __init__(self, context: Any) -> None:
        self._state = context.get("task_state_store") if AIRFLOW_V_3_3_PLUS else None
        ti = context.get("ti")
        self._run_id = str(getattr(ti, "run_id", None))
        identity = [getattr(ti, "dag_id", None), getattr(ti, "task_id", None), getattr(ti, "map_index", -1)]
        digest = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:40]
        self._variable_key = VARIABLE_PREFIX + digest

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            if self._state is not None:
                raw = self._state.get(SPEND_KEY)
            else:
                from airflow.sdk import Variable

                raw = Variable.get(self._variable_key, default=None)
        except Exception as err:
            log.warning("Could not read this task's fal spend (%s); counting from zero", err)
            return {}
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                return {}
        if not isinstance(raw, Mapping) or raw.get("run_id") != self._run_id:
            return {}
        requests = raw.get("requests")
        return dict(requests) if isinstance(requests, Mapping) else {}

    def save(self, requests: Mapping[str, Mapping[str, Any]]) -> None:
        record = {"run_id": self._run_id, "requests": dict(requests)}
        try:
            if self._state is not None:
                self._state.set(SPEND_KEY, record)
            else:
                from airflow.sdk import Variable

                Variable.set(self._variable_key, json.dumps(record))
        except Exception as err:
            log.warning("Could not store this task's fal spend (%s); a retry may count it again", err)

    def update(self, request_id: str, **fields: Any) -> dict[str, Any]:
        requests = self.load()
        entry = {**requests.get(request_id, {}), **fields}
        requests[request_id] = entry
        self.save(requests)
        return entry


def spent_of(entries: Mapping[str, Mapping[str, Any]]) -> float:
    """What the task's requests cost so far: the actual cost, else the estimate reserved for it."""
    return money(
        math.fsum(
            float(entry["cost"] if entry.get("cost") is not None else entry.get("estimate") or 0.0)
            for entry in entries.values()
        )
    )


@dataclass(frozen=True)
class Reservation:
    budget: str | None
    amount: float


class CostGuard:
    """The before/after-submit half of money for one try of one submitting task."""

    def __init__(self, settings: CostSettings, hook: Any, context: Any) -> None:
        self.settings = settings
        self.hook = hook
        self.context = context
        ti = context["ti"]
        self.tags = request_tags(ti.dag_id, ti.task_id, settings.tags)
        self.budget_key = None
        self.limit = 0.0
        if settings.budget is not None:
            # Configuration mistakes fail here, before the estimate or anything else goes out.
            self.limit = budgets.budget_limit(settings.budget, settings.budget_limit)
            budgets.database_url()
            scope = "" if settings.budget_scope == "global" else f"@{ti.dag_id}/{ti.run_id}"
            self.budget_key = settings.budget + scope

    def headers(self) -> dict[str, str]:
        return {TAGS_HEADER: tags_header(self.tags)}

    def estimate(self, endpoint: str) -> float | None:
        """fal's historical cost of one call, else the last cost seen here, else ``None``."""
        try:
            return float(
                self.hook.estimate_cost({endpoint: 1}, estimate_type="historical_api_price").total_cost
            )
        except Exception as err:
            _warn_once(f"estimate:{endpoint}", "No fal cost estimate for %s (%s)", endpoint, err)
        return _LAST_COST.get(endpoint)

    def before_submit(self, endpoint: str) -> Reservation:
        """Check ``max_cost`` and reserve in the named budget; raise ``FalBudgetExceeded`` past one."""
        if not self.settings.limited:
            return Reservation(None, 0.0)
        needed = self.estimate(endpoint)
        if needed is None:
            if self.settings.strict_budget:
                raise FalPermanentError(
                    f"strict_budget: the cost of a request to {endpoint} cannot be estimated (no fal price "
                    "estimate and none observed in this process), so it is not submitted. Pass "
                    "strict_budget=False to let unpriced requests through."
                )
            log.warning(
                "The cost of %s cannot be estimated; budget checks count it as 0 until its result", endpoint
            )
            needed = 0.0
        if self.settings.max_cost is not None:
            spent = spent_of(SpendStore(self.context).load())
            if spent + needed > self.settings.max_cost + budgets.EPSILON:
                raise budgets.budget_exceeded(
                    "max_cost of this task",
                    spent,
                    0.0,
                    needed,
                    self.settings.max_cost,
                    "raise max_cost on the task",
                )
        if self.budget_key is not None:
            budgets.ledger().reserve(self.budget_key, needed, self.limit)
        return Reservation(self.budget_key, needed)

    def submitted(self, request_id: str, reservation: Reservation, *, settle: bool = False) -> dict[str, Any]:
        """Remember the request with its reservation, so whichever try fetches the result settles it;
        returns the entry (the caller keeps it for a result fetched in this same process).

        ``settle``: the task never sees the result (submit only), so the estimate is what it spent.
        Tasks without limits store nothing (no extra calls).
        """
        fields: dict[str, Any] = {"estimate": reservation.amount, "budget": reservation.budget}
        fields["submitted_at"] = time.time()
        if settle:
            fields["cost"] = reservation.amount
            if reservation.budget is not None:
                budgets.ledger().settle(reservation.budget, reservation.amount, reservation.amount)
        if self.settings.limited:
            SpendStore(self.context).update(request_id, **fields)
        return {request_id: fields}

    def not_submitted(self, reservation: Reservation, err: BaseException) -> None:
        """Release the reservation of a submit fal refused; keep it when fal may have accepted it."""
        if reservation.budget is None or not isinstance(err, FalPermanentError):
            return
        budgets.ledger().settle(reservation.budget, reservation.amount, 0.0)


def price_of(hook: Any, endpoint: str) -> tuple[Any, str | None]:
    """The cached list price of ``endpoint``, or ``None`` and why (never raises)."""
    try:
        price = hook.get_pricing([endpoint]).get(endpoint)
    except Exception as err:
        _warn_once(
            f"price:{endpoint}", "No fal price for %s (%s); its cost is reported as unknown", endpoint, err
        )
        return None, f"pricing unavailable ({type(err).__name__})"
    return price, None if price is not None else "fal lists no price for this endpoint"


def record_cost(
    op: Any,
    context: Any,
    *,
    app_id: str,
    request_id: str,
    units: float | None,
    metrics: Mapping[str, Any] | None = None,
) -> CostRecord:
    """Price a finished request, log it, push it to XCom, emit metrics, settle budgets. Never raises
    for a pricing problem: a result is worth more than its price tag."""
    hook = op.hook  # type: ignore[attr-defined]
    endpoint = endpoint_of(app_id, getattr(op, "path", "") or "")
    price, reason = price_of(hook, endpoint) if units is not None else (None, None)
    record = cost_record(endpoint, request_id, units, price, reason=reason)
    op.log.info("fal cost: %s", record.describe())
    if record.cost is not None:
        _LAST_COST[endpoint] = record.cost
    _push(context, record)
    entry = _spend_entry(op, context, request_id)
    if entry is not None and entry.get("cost") is None:
        _settle(context, request_id, entry, record, stored=_limited(op))
    emit_metrics(record, "success", metrics, entry)
    return record


def _push(context: Any, record: CostRecord) -> None:
    """The record under ``fal_cost`` (a try fetches one request; a later try's push replaces it)."""
    try:
        context["ti"].xcom_push(key=XCOM_KEY, value=record.to_xcom())
    except Exception as err:
        log.warning("Could not push the fal cost record to XCom: %s", err)


def _limited(op: Any) -> bool:
    settings = getattr(op, "cost_settings", None)
    return bool(settings is not None and settings.limited)


def _spend_entry(op: Any, context: Any, request_id: str) -> dict[str, Any] | None:
    """The submit's entry: kept on the operator when this process submitted, else (a resumed or
    later try) from the task's spend store."""
    entry = (getattr(op, "fal_spend", None) or {}).get(request_id)
    if entry is None and _limited(op):
        entry = SpendStore(context).load().get(request_id)
    return entry


def _settle(
    context: Any, request_id: str, entry: Mapping[str, Any], record: CostRecord, *, stored: bool
) -> None:
    actual = record.cost if record.cost is not None else float(entry.get("estimate") or 0.0)
    if stored:
        SpendStore(context).update(request_id, cost=actual)
    name = entry.get("budget")
    if name:
        state = budgets.ledger().settle(str(name), float(entry.get("estimate") or 0.0), actual)
        log.info("fal budget %s: spent %.10g USD, reserved %.10g USD", name, state.spent, state.reserved)


def emit_metrics(
    record: CostRecord, outcome: str, metrics: Mapping[str, Any] | None, entry: Mapping[str, Any] | None
) -> None:
    """Airflow metrics (StatsD/OTel, as configured), tagged only by app id and outcome."""
    stats = _stats()
    if stats is None:
        return
    tags = {"app_id": record.app_id, "outcome": outcome}
    try:
        stats.incr("fal.requests", tags=tags)
        if record.units is not None:
            stats.gauge("fal.request.billable_units", record.units, tags=tags)
        if record.cost is not None:
            stats.gauge("fal.request.cost", record.cost, tags=tags)
        inference = (metrics or {}).get("inference_time")
        if isinstance(inference, int | float):
            stats.timing("fal.request.inference_time", timedelta(seconds=inference), tags=tags)
            submitted = (entry or {}).get("submitted_at")
            if isinstance(submitted, int | float):
                queued = max(0.0, time.time() - submitted - inference)
                stats.timing("fal.request.queue_time", timedelta(seconds=queued), tags=tags)
    except Exception as err:  # metrics never fail a task
        _warn_once("metrics", "Could not emit fal metrics: %s", err)


def _stats() -> Any:
    try:
        from airflow.providers.common.compat.sdk import Stats
    except ImportError:
        try:
            from airflow.sdk.observability.stats import Stats
        except ImportError:
            return None
    return Stats
