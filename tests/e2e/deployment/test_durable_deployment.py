"""Never pay twice, in a real deployment (PostgreSQL, scheduler, triggerer, api-server, emulator).

* A task process SIGKILLed right after it fetched the result (before Airflow recorded the success):
  the retry reattaches to the succeeded request and fetches its result, no second submission.
* A fan-out of 60 mapped deferrable tasks with 10 % each of 429, 502, 503 and dropped connections on
  every endpoint (faults that fire before fal accepts the call) and ``retries=3``: every task
  succeeds, with exactly one fal request per task and none left running.

The emulator's per-request views are the evidence of what was paid for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.deployment.cluster import DeploymentCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

FANOUT_SIZE = 60
GATEWAY_FAULTS = [{"kind": kind, "rate": 0.1} for kind in ("429", "502", "503", "drop")]


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

    assert cluster.try_number(dag_id, run_id, "infer") >= 2, "the first try was meant to be killed"
    submits = cluster.emulator.requests_with_marker(f"{run_id}/infer")
    assert len(submits) == 1, f"paid for {len(submits)} requests: {[s['request_id'] for s in submits]}"
    result = cluster.xcoms(dag_id, run_id)[("infer", -1)]
    assert result["marker"] == f"{run_id}/infer"


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
