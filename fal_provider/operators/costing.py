"""The DAG run's cost report (:class:`FalCostReportOperator`).

What a submitting task does about money (the price check and reservation before a submit, the cost
record after a result) is the Money section of :mod:`fal_provider.operators.lifecycle`; the records themselves are values
in :mod:`fal_provider.hooks.platform`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperator

from fal_provider.hooks.platform import CostRecord, reconciled, total_of
from fal_provider.operators.lifecycle import COST_XCOM_KEY

__all__ = ["FalCostReportOperator"]


class FalCostReportOperator(BaseOperator):
    """Sum what the fal requests of this DAG run cost, log it and return it.

    Reads every task's ``fal_cost`` XCom in the run (mapped task instances included) and returns
    :meth:`~fal_provider.hooks.platform.CostTotal.to_xcom`: ``total``, ``currency``, ``requests``, ``unknown``
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
                CostRecord.from_xcom(r) for r in _records(ti.xcom_pull(task_ids=task_id, key=COST_XCOM_KEY))
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
