"""A worker killed between the submit POST and saving fal's answer; the retry adopts the request.

Real deployment (PostgreSQL, scheduler, triggerer, api-server, the emulator as its own process).
The emulator accepts the submit and holds its answer back (an ``after_accept`` fault with
``answer="late"``); while the task process waits for it, the test SIGKILLs that process, as an
OOM kill or a lost node would. The try left only its intent record; the retry finds the request in
fal's request history by its input and waits for it. The emulator's per-request view is the
evidence: one request for the task instance.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.deployment.cluster import DeploymentCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

DAG_ID = "fal_orphan_killed_before_the_answer"


def _task_pid(cluster: DeploymentCluster, run_id: str) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = cluster.query(
            "SELECT pid FROM task_instance WHERE dag_id=? AND run_id=? AND task_id='infer'", [DAG_ID, run_id]
        )
        if rows and rows[0][0]:
            return int(rows[0][0])
        time.sleep(0.2)
    raise AssertionError(f"no pid recorded for the task{cluster.component_logs()}")


def test_the_retry_adopts_the_request_whose_answer_the_dead_worker_never_saw(
    cluster: DeploymentCluster,
) -> None:
    cluster.wait_for_dags([DAG_ID])
    cluster.emulator.set_faults(
        [
            {
                "kind": "after_accept",
                "answer": "late",
                "delay_s": 120,
                "count": 1,
                "endpoints": ["submit"],
                "apps": ["emulator/echo"],
            }
        ]
    )
    try:
        run_id = cluster.trigger_run(DAG_ID)
        marker = f"{run_id}/infer"
        submitted = cluster.wait_for(
            lambda: cluster.emulator.requests_with_marker(marker) or None, timeout=180, what="the submit"
        )
        assert len(submitted) == 1
        os.kill(_task_pid(cluster, run_id), signal.SIGKILL)  # fal has the request; the worker never heard

        state = cluster.wait_for_run(DAG_ID, run_id, timeout=240)
        states = cluster.task_states(DAG_ID, run_id)
        assert state == "success", f"{states}{cluster.component_logs()}"
    finally:
        cluster.emulator.set_faults([])

    assert cluster.try_number(DAG_ID, run_id, "infer") == 2, "the first try was meant to die"
    requests = cluster.emulator.requests_with_marker(marker)
    assert [r["request_id"] for r in requests] == [submitted[0]["request_id"]], "the retry paid again"
    assert cluster.xcoms(DAG_ID, run_id)[("infer", -1)]["marker"] == marker
    logs = list(cluster.home.glob(f"logs/dag_id={DAG_ID}/run_id={run_id}/task_id=infer/attempt=2*.log"))
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert f"Adopting fal request {submitted[0]['request_id']}" in text, text[-3000:]
