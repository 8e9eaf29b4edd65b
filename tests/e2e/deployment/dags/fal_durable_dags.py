"""DAGs of the durability tests: a worker killed after the result, a fan-out under gateway faults.

Every submit carries a ``marker`` so the tests count, in the emulator, how many fal requests each
task instance paid for.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from fal_provider.operators.fal import FalInferenceOperator

START = datetime(2025, 1, 1)
FANOUT_SIZE = 60


def _die_on_first_try(context: Any, result: Any) -> None:
    """Runs right after ``execute`` returned the fetched result, before Airflow records the
    success: the first try's task process dies here as an evicted or OOM-killed worker would."""
    if context["ti"].try_number == 1:
        os.kill(os.getpid(), signal.SIGKILL)


# The worker dies right after fetching the result; the retry must fetch it without a new submit.
# Waiting on the worker: a deferral would add Airflow's own race (a trigger that fires soon after
# the defer can send the try to up_for_retry before execute_complete runs), which the fan-out covers.
with DAG(
    "fal_dur_killed_after_result",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    FalInferenceOperator(
        task_id="infer",
        app_id="emulator/echo",
        arguments={"duration_s": 2, "marker": "{{ run_id }}/{{ ti.task_id }}"},
        deferrable=False,
        poll_interval=0.5,
        max_poll_interval=1,
        post_execute=_die_on_first_try,
    )

# 60 mapped deferrable tasks; the test injects gateway faults (429/502/503/drop) on every endpoint.
with DAG(
    "fal_dur_fanout",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_tasks=16,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=1)},
):
    FalInferenceOperator.partial(
        task_id="infer",
        app_id="emulator/echo",
        deferrable=True,
        poll_interval=0.5,
        max_poll_interval=1,
    ).expand(arguments=[{"index": i, "duration_s": 1, "marker": "{{ run_id }}"} for i in range(FANOUT_SIZE)])


def _waiting_on_the_worker(dag_id: str, duration_s: int, retries: int) -> None:
    with DAG(
        dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={"retries": retries, "retry_delay": timedelta(seconds=1)},
    ):
        FalInferenceOperator(
            task_id="infer",
            app_id="emulator/echo",
            arguments={"duration_s": duration_s, "marker": "{{ run_id }}/{{ ti.task_id }}"},
            deferrable=False,
            poll_interval=0.5,
            max_poll_interval=1,
        )


# The worker's supervisor gets SIGTERM (an eviction) while the task waits on the worker.
_waiting_on_the_worker("fal_dur_sigterm", duration_s=15, retries=1)
# A user marks the task failed while it waits on the worker.
_waiting_on_the_worker("fal_dur_mark_failed", duration_s=600, retries=0)
