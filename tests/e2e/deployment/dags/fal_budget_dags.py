"""DAG of the budget test: ten mapped tasks racing for a shared budget that fits four of them.

``emulator/echo`` costs 0.0001 USD a request (the emulator's price table) and fal's historical
price per call is the same, so each task reserves 0.0001 before its submit; the per-run budget of
0.00045 USD fits exactly four. ``retries=2``: a budget refusal is permanent and must spend none.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from fal_provider.operators.fal import FalInferenceOperator

BUDGET_TASKS = 10
BUDGET_LIMIT = 0.00045

with DAG(
    "fal_budget_fanout",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_tasks=BUDGET_TASKS,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
):
    FalInferenceOperator.partial(
        task_id="infer",
        app_id="emulator/echo",
        deferrable=False,
        poll_interval=0.5,
        max_poll_interval=1,
        budget="fanout",
        budget_limit=BUDGET_LIMIT,
        budget_scope="dag_run",
    ).expand(arguments=[{"index": i, "duration_s": 1, "marker": "{{ run_id }}"} for i in range(BUDGET_TASKS)])
