"""What operators do about money: tag, price-check and reserve before a submit; record after a result.

Before each submit (:meth:`CostGuard.before_submit`): the request's estimated cost (fal's
historical price per call of the endpoint, else the last cost this process observed for it) is
checked against ``max_cost`` (this task, across all its tries) and reserved in a named budget
(:mod:`fal_provider.budgets`); past a limit the task fails with a permanent
:class:`~fal_provider.exceptions.FalBudgetExceeded` and nothing is submitted. When no estimate can
be had, the check lets the request through with a warning, unless ``strict_budget=True``.

After the result (:func:`record_cost`): one :class:`~fal_provider.cost.CostRecord` per request,
logged, pushed to XCom under ``fal_cost``, counted in Airflow metrics, added to the task's spend and
settled in the named budget.

The task's spend lives where reattach keeps the request (``task_state_store`` on Airflow >= 3.3,
else a Variable keyed by dag / task / map index and the run), keyed by request id, so a retry
continues the count and a request fetched again by a later try is counted once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from fal_provider import budgets
from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.cost import (
    TAGS_HEADER,
    XCOM_KEY,
    CostRecord,
    check_budget_name,
    check_max_cost,
    check_tags,
    cost_record,
    reconciled,
    request_tags,
    tags_header,
    total_of,
)
from fal_provider.exceptions import FalInputError, FalPermanentError

log = logging.getLogger(__name__)

__all__ = ["CostGuard", "CostSettings", "FalCostReportOperator", "record_cost"]

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
    total = 0.0
    for entry in entries.values():
        cost = entry.get("cost")
        total += float(cost if cost is not None else entry.get("estimate") or 0.0)
    return total


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
    op: BaseOperator,
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


class FalCostReportOperator(BaseOperator):
    """Sum what the fal requests of this DAG run cost, log it and return it.

    Reads every task's ``fal_cost`` XCom in the run (mapped task instances included) and returns
    :meth:`~fal_provider.cost.CostTotal.to_xcom`: ``total``, ``currency``, ``requests``, ``unknown``
    (requests without a figure) and ``exact``. Put it downstream of the fal tasks (with
    ``trigger_rule="all_done"`` to report failed runs too).

    :param task_ids: the tasks to sum (default: every task of the DAG).
    :param exact: replace the estimates by what fal charged, from its billing events (needs the
        connection's ``admin_key``; fal may report recent events late). Requests without an event
        keep their estimate; a failing lookup keeps them all, with a warning.
    :param fal_conn_id: the connection used with ``exact``.
    """

    template_fields = ("task_ids",)

    def __init__(
        self,
        *,
        task_ids: list[str] | None = None,
        exact: bool = False,
        fal_conn_id: str = "fal_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.task_ids = task_ids
        self.exact = exact
        self.fal_conn_id = fal_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        ids = list(self.task_ids or [t for t in context["dag"].task_ids if t != self.task_id])
        records: list[CostRecord] = []
        for task_id in ids:
            records.extend(
                CostRecord.from_xcom(r) for r in _records(ti.xcom_pull(task_ids=task_id, key=XCOM_KEY))
            )
        if self.exact and records:
            records = _reconciled(self, records)
        total = total_of(records)
        for record in records:
            self.log.info("  %s", record.describe())
        self.log.info("This DAG run's %s", total.describe())
        return total.to_xcom()


def _reconciled(op: FalCostReportOperator, records: list[CostRecord]) -> list[CostRecord]:
    from fal_provider.hooks.fal import FalHook

    try:
        events = FalHook(op.fal_conn_id).get_billing_events([r.request_id for r in records])
    except Exception as err:
        op.log.warning("Could not read fal's billing events (%s); the total is an estimate", err)
        return records
    by_id = {e.request_id: e for e in events}
    return [reconciled(r, by_id[r.request_id]) if r.request_id in by_id else r for r in records]


def _records(value: Any) -> list[Mapping[str, Any]]:
    """The records in what ``xcom_pull`` returns: one record, or (mapped tasks) a list of them."""
    if isinstance(value, Mapping):
        return [value] if "request_id" in value else []
    if isinstance(value, list | tuple):
        return [record for item in value for record in _records(item)]
    return []
