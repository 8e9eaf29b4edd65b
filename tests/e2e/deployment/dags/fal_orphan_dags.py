"""DAG of the orphan-recovery test: its worker is killed while fal holds back the submit's answer.

The submit carries a ``marker`` so the test counts, in the emulator, how many fal requests the task
instance paid for.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from fal_provider.operators.fal import FalInferenceOperator

with DAG(
    "fal_orphan_killed_before_the_answer",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    FalInferenceOperator(
        task_id="infer",
        app_id="emulator/echo",
        arguments={"duration_s": 1, "marker": "{{ run_id }}/{{ ti.task_id }}"},
        deferrable=False,
        poll_interval=0.5,
        max_poll_interval=1,
        on_orphan="fail",  # a retry that cannot find the request must not pay for it again
    )
