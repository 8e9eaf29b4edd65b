"""Never pay twice, in a real deployment (PostgreSQL, scheduler, triggerer, api-server, emulator).

* A task process SIGKILLed right after it fetched the result (before Airflow recorded the success):
  the retry reattaches to the succeeded request and fetches its result, no second submission.
* A fan-out of 60 mapped deferrable tasks with 10 % each of 429, 502, 503 and dropped connections on
  every endpoint it uses (faults that fire before fal accepts the call) and ``retries=3``: every task
  succeeds, with exactly one fal request per task and none left running.

The emulator's per-request views are the evidence of what was paid for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from tests.e2e.deployment.cluster import DeploymentCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

FANOUT_SIZE = 60
GATEWAY_KINDS = ("429", "502", "503", "drop")
#: 10 % of each kind. On the reads (retried by the hook) as a rate. On the submit as a count, 6 of
#: each among the run's 60 submits: a 502 or a drop there cannot be told from an answer lost after
#: fal accepted the POST, so the hook leaves it to the task's retries, and a rate would let one
#: task in a few hundred runs draw four in a row and fail all of its tries by chance alone.
GATEWAY_FAULTS = [
    *({"kind": kind, "count": FANOUT_SIZE // 10, "endpoints": ["submit"]} for kind in GATEWAY_KINDS),
    *(
        {"kind": kind, "rate": 0.1, "endpoints": ["status", "status_stream", "result", "cancel"]}
        for kind in GATEWAY_KINDS
    ),
]


def _finish(cluster: DeploymentCluster, dag_id: str, run_id: str, timeout: float) -> dict[Any, Any]:
    state = cluster.wait_for_run(dag_id, run_id, timeout=timeout)
    states = cluster.task_states(dag_id, run_id)
    assert state == "success", f"{dag_id}: {states}{cluster.component_logs()}"
    return states


def _keep_evidence(cluster: DeploymentCluster, submits: list[dict[str, Any]]) -> str:
    """Copy the task logs and the emulator's request views out of the cluster (deleted at teardown)."""
    target = Path(os.environ.get("FAL_E2E_EVIDENCE_DIR") or tempfile.mkdtemp(prefix="fal-durable-evidence-"))
    target.mkdir(parents=True, exist_ok=True)
    if (cluster.home / "logs").exists():
        shutil.copytree(cluster.home / "logs", target / "logs", dirs_exist_ok=True)
    for name in (*cluster.COMPONENTS, "triggerer"):
        if (cluster.home / f"{name}.log").exists():
            shutil.copy(cluster.home / f"{name}.log", target / f"{name}.log")
    (target / "requests.json").write_text(json.dumps(submits, indent=1, default=str))
    return f" (task logs and requests kept in {target})"


def test_worker_killed_after_the_result_costs_no_second_submission(cluster: DeploymentCluster) -> None:
    dag_id = "fal_dur_killed_after_result"
    cluster.wait_for_dags([dag_id])
    run_id = cluster.trigger_run(dag_id)

    _finish(cluster, dag_id, run_id, timeout=240)

    assert cluster.try_number(dag_id, run_id, "infer") == 2, "the first try was meant to be killed"
    submits = cluster.emulator.requests_with_marker(f"{run_id}/infer")
    evidence = _keep_evidence(cluster, submits) if os.environ.get("FAL_E2E_EVIDENCE_DIR") else ""
    assert len(submits) == 1, (
        f"paid for {len(submits)} requests: {[s['request_id'] for s in submits]}{evidence}"
    )
    result = cluster.xcoms(dag_id, run_id)[("infer", -1)]
    assert result["marker"] == f"{run_id}/infer"


def _waiting_task_pid(cluster: DeploymentCluster, dag_id: str, run_id: str) -> int:
    """The task process of a running try that has submitted (its reference XCom exists)."""
    cluster.wait_for_task_state(dag_id, run_id, "infer", "running", timeout=150)
    cluster.request_of(dag_id, run_id, "infer")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = cluster.query(
            "SELECT pid FROM task_instance WHERE dag_id=? AND run_id=? AND task_id='infer'", [dag_id, run_id]
        )
        if rows and rows[0][0]:
            return int(rows[0][0])
        time.sleep(0.5)
    raise AssertionError(f"no pid recorded for {dag_id}/{run_id}{cluster.component_logs()}")


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _request_state(
    cluster: DeploymentCluster, request_id: str, wanted: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = cluster.emulator.request_info(request_id)
        if info["state"] == wanted:
            return info
        time.sleep(0.5)
    raise AssertionError(f"request {request_id} still {info.get('state')}{cluster.component_logs()}")


def test_worker_shutdown_keeps_the_request_and_the_retry_reattaches(cluster: DeploymentCluster) -> None:
    """SIGTERM to the worker's supervisor (what an eviction sends), forwarded to the task process."""
    dag_id = "fal_dur_sigterm"
    cluster.wait_for_dags([dag_id])
    run_id = cluster.trigger_run(dag_id)
    pid = _waiting_task_pid(cluster, dag_id, run_id)
    request_id = cluster.request_of(dag_id, run_id, "infer")
    cancels_before = cluster.emulator.stats()["cancels"]

    os.kill(_parent_of(pid), signal.SIGTERM)

    _finish(cluster, dag_id, run_id, timeout=240)
    # Airflow 3.1's supervisor does not pass SIGTERM on to the task process, so there the try
    # simply runs on to its success; from 3.3 the task gets it and must end retryable.
    expected_try = 2 if AIRFLOW_V_3_3_PLUS else 1
    assert cluster.try_number(dag_id, run_id, "infer") == expected_try, (
        "the shutdown must end the try retryable"
    )
    assert [s["request_id"] for s in cluster.emulator.requests_with_marker(f"{run_id}/infer")] == [request_id]
    assert cluster.emulator.stats()["cancels"] == cancels_before, "a shutdown must not cancel the request"
    info = cluster.emulator.request_info(request_id)
    assert info["state"] == "COMPLETED" and not info.get("error"), info
    assert cluster.xcoms(dag_id, run_id)[("infer", -1)]["marker"] == f"{run_id}/infer"


def test_marking_a_task_waiting_on_the_worker_failed_cancels_its_request(cluster: DeploymentCluster) -> None:
    dag_id = "fal_dur_mark_failed"
    cluster.wait_for_dags([dag_id])
    run_id = cluster.trigger_run(dag_id)
    _waiting_task_pid(cluster, dag_id, run_id)
    request_id = cluster.request_of(dag_id, run_id, "infer")

    response = cluster.mark_task(dag_id, run_id, "infer", "failed")
    assert response.status_code == 200, response.text

    info = _request_state(cluster, request_id, "COMPLETED", timeout=90)
    assert "cancel" in str(info.get("error_type") or info.get("error") or ""), info
    assert cluster.task_states(dag_id, run_id)[("infer", -1)] == "failed"


def test_fanout_under_gateway_faults_pays_once_per_task(cluster: DeploymentCluster) -> None:
    dag_id = "fal_dur_fanout"
    cluster.wait_for_dags([dag_id])
    cluster.emulator.set_faults(GATEWAY_FAULTS)
    try:
        run_id = cluster.trigger_run(dag_id)
        cluster.wait_for_run(dag_id, run_id, timeout=420)
        states = cluster.task_states(dag_id, run_id)
        faults = cluster.emulator.stats().get("faults_injected")
    finally:
        cluster.emulator.set_faults([])

    submits = cluster.emulator.requests_with_marker(run_id)
    if Counter(states.values()) != {"success": FANOUT_SIZE} or len(submits) != FANOUT_SIZE:
        evidence = _keep_evidence(cluster, submits)
        assert Counter(states.values()) == {"success": FANOUT_SIZE}, f"{states}{evidence}"
        assert len(submits) == FANOUT_SIZE, f"{len(submits)} submissions for {FANOUT_SIZE} tasks{evidence}"
    per_task = Counter(int(s["arguments"]["index"]) for s in submits)
    duplicates = {index: n for index, n in per_task.items() if n > 1}
    assert not duplicates, f"tasks that paid more than once: {duplicates}; faults: {faults}"
    assert sorted(per_task) == list(range(FANOUT_SIZE))
    unfinished = [s["request_id"] for s in submits if s["state"] != "COMPLETED"]
    assert not unfinished, f"requests left running: {unfinished}"
    results = cluster.xcoms(dag_id, run_id)
    assert sorted(v["index"] for v in results.values()) == list(range(FANOUT_SIZE))
    assert faults, "no fault fired: the test proved nothing"
