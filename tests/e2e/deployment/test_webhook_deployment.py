"""wait_mode="webhook" in a real deployment: api-server (fal webhook plugin), scheduler, triggerer and
dag-processor as separate processes on PostgreSQL, and the fal emulator as another process that
delivers signed callbacks to the api-server.

Scenarios 1-4 and 6 run as DAG runs started together (``runs``); scenario 5 kills the triggerer and
runs last. The emulator's counters (``/_emulator/stats``, per-request views) are the evidence of what
Airflow asked fal; every submit carries a ``marker`` so submits are counted per task instance.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider.emulator.webhooks import sign_webhook, webhook_payload
from fal_provider.webhooks.store import record_key
from tests.e2e.deployment.cluster import DeploymentCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SCENARIO_DAGS = ("fal_dep_webhook", "fal_dep_dropped", "fal_dep_duplicated", "fal_dep_cancel")
EMULATOR_USER = "emulator-user"


@pytest.fixture(scope="module")
def runs(cluster: DeploymentCluster) -> dict[str, str]:
    """Faults for the drop/duplicate apps, then one run of each scenario DAG, all at once."""
    cluster.emulator.set_faults(
        [
            {"kind": "webhook_drop", "rate": 1.0, "apps": ["fal-ai/flux/schnell"]},
            {"kind": "webhook_duplicate", "rate": 1.0, "apps": ["fal-ai/flux/dev"]},
        ]
    )
    cluster.wait_for_dags([*SCENARIO_DAGS, "fal_dep_restart"])
    return {dag_id: cluster.trigger_run(dag_id) for dag_id in SCENARIO_DAGS}


def finish(cluster: DeploymentCluster, dag_id: str, run_id: str, timeout: float = 240) -> dict[Any, Any]:
    state = cluster.wait_for_run(dag_id, run_id, timeout=timeout)
    states = cluster.task_states(dag_id, run_id)
    assert state == "success", f"{dag_id}: {states}{cluster.component_logs()}"
    return states


def submits_of(cluster: DeploymentCluster, run_id: str, task_id: str) -> list[dict[str, Any]]:
    return cluster.emulator.requests_with_marker(f"{run_id}/{task_id}")


def status_calls(cluster: DeploymentCluster, request_id: str) -> int:
    return int(cluster.emulator.stats()["status_calls"]["by_request"].get(request_id, 0))


def post_callback(
    cluster: DeploymentCluster, query: dict[str, str], body: bytes, headers: dict[str, str]
) -> httpx.Response:
    url = f"{cluster.api_url}/fal/webhook?{urlencode(query)}"
    return httpx.post(url, content=body, headers={**headers, "content-type": "application/json"}, timeout=30)


# ------------------------------------------------------------------------------ 1 + 2


def test_forged_callbacks_are_rejected_and_the_real_one_resumes_the_task(
    cluster: DeploymentCluster, runs: dict[str, str]
) -> None:
    dag_id, run_id = "fal_dep_webhook", runs["fal_dep_webhook"]
    started = time.monotonic()
    cluster.wait_for_task_state(dag_id, run_id, "infer", "deferred", timeout=120)
    request_id = cluster.request_of(dag_id, run_id, "infer")
    query = {"dag_id": dag_id, "run_id": run_id, "task_id": "infer"}
    body = json.dumps(webhook_payload(request_id, 200, {"forged": True})).encode()
    real_key = cluster.emulator.signing_key()

    forged = {
        "bad signature": (
            body,
            sign_webhook(body, request_id, Ed25519PrivateKey.generate(), user_id=EMULATOR_USER),
            401,
        ),
        "stale timestamp": (
            body,
            sign_webhook(
                body, request_id, real_key, user_id=EMULATOR_USER, timestamp=int(time.time()) - 3600
            ),
            401,
        ),
        "tampered body": (
            body.replace(b'"forged": true', b'"forged": false'),
            sign_webhook(body, request_id, real_key, user_id=EMULATOR_USER),
            401,
        ),
        # signed by fal's real key, but for another fal account: not on the allow-list
        "another fal account": (
            body,
            sign_webhook(body, request_id, real_key, user_id="another-account"),
            403,
        ),
    }
    for name, (sent, headers, expected) in forged.items():
        response = post_callback(cluster, query, sent, headers)
        assert response.status_code == expected, (name, response.status_code, response.text)

    time.sleep(2)  # give a wrongly accepted callback time to wake the task
    assert cluster.task_states(dag_id, run_id)[("infer", -1)] == "deferred", "a forged callback woke the task"
    assert cluster.variable_keys(record_key(request_id)) == [], "a forged callback was recorded"

    finish(cluster, dag_id, run_id, timeout=180)
    elapsed = time.monotonic() - started
    assert elapsed < 200, f"took {elapsed:.0f}s; only the 300 s backstop could explain that"
    assert status_calls(cluster, request_id) == 1, "only the check before deferring; no polling while waiting"
    assert len(submits_of(cluster, run_id, "infer")) == 1
    assert cluster.variable_keys(record_key(request_id)) == [record_key(request_id)]
    api_log = cluster.log_text("api-server")
    assert f"fal webhook recorded for request {request_id} (status OK); task resumed" in api_log
    assert api_log.count(f"[request_id={request_id}]") >= 4, "each forged call logged with its reason"
    assert "'another-account' is not on the allow-list" in api_log
    xcom = cluster.xcoms(dag_id, run_id)[("infer", -1)]
    assert xcom["duration_s"] == 20 and "forged" not in xcom, "the result comes from fal, not a callback body"


# ------------------------------------------------------------------------------ 3


def test_dropped_webhook_is_recovered_by_the_backstop(
    cluster: DeploymentCluster, runs: dict[str, str]
) -> None:
    dag_id, run_id = "fal_dep_dropped", runs["fal_dep_dropped"]
    finish(cluster, dag_id, run_id)
    request_id = cluster.request_of(dag_id, run_id, "infer")
    info = cluster.emulator.request_info(request_id)
    assert {"event": "dropped"} in info["webhook_events"], info["webhook_events"]
    assert cluster.variable_keys(record_key(request_id)) == [], "nothing reached the receiver"
    assert status_calls(cluster, request_id) >= 2, "pre-defer check plus at least one backstop poll"
    assert len(submits_of(cluster, run_id, "infer")) == 1


# ------------------------------------------------------------------------------ 4


def test_duplicated_webhook_is_harmless(cluster: DeploymentCluster, runs: dict[str, str]) -> None:
    dag_id, run_id = "fal_dep_duplicated", runs["fal_dep_duplicated"]
    finish(cluster, dag_id, run_id)
    request_id = cluster.request_of(dag_id, run_id, "infer")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        successes = [
            e for e in cluster.emulator.request_info(request_id)["webhook_events"] if e["event"] == "success"
        ]
        if len(successes) >= 2:
            break
        time.sleep(0.5)
    assert len(successes) == 2, "both deliveries were answered 2xx"
    assert cluster.try_number(dag_id, run_id, "infer") == 1, "the task ran once"
    assert cluster.variable_keys(record_key(request_id)) == [record_key(request_id)], "one record"
    api_log = cluster.log_text("api-server")
    assert f"fal webhook recorded for request {request_id}" in api_log
    assert f"fal webhook duplicate for request {request_id}" in api_log
    assert len(submits_of(cluster, run_id, "infer")) == 1
    assert status_calls(cluster, request_id) == 1
    # on_kill of the triggers the receiver resumed (this one and scenario 1) skipped the cancel
    time.sleep(3)
    assert cluster.emulator.stats()["cancels"] == 0, "a webhook-resumed task sent a needless cancel"


# ------------------------------------------------------------------------------ 6


def test_marking_a_deferred_task_failed_cancels_the_fal_request(
    cluster: DeploymentCluster, runs: dict[str, str]
) -> None:
    dag_id, run_id = "fal_dep_cancel", runs["fal_dep_cancel"]
    cluster.wait_for_task_state(dag_id, run_id, "infer", "deferred", timeout=120)
    request_id = cluster.request_of(dag_id, run_id, "infer")
    time.sleep(2)  # let the triggerer pick the trigger up
    cancels_before = cluster.emulator.stats()["cancels"]

    response = cluster.mark_task(dag_id, run_id, "infer", "failed")
    assert response.status_code == 200, response.text

    deadline = time.monotonic() + 90
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = cluster.emulator.request_info(request_id)
        if info["state"] == "COMPLETED":
            break
        time.sleep(0.5)
    assert info.get("state") == "COMPLETED", f"request still {info.get('state')}{cluster.component_logs()}"
    assert "cancel" in str(info.get("error_type") or info.get("error") or ""), info
    assert cluster.emulator.stats()["cancels"] == cancels_before + 1
    assert cluster.task_states(dag_id, run_id)[("infer", -1)] == "failed"


# ------------------------------------------------------------------------------ 5


def test_triggerer_sigkill_every_mode_completes_with_one_submission_each(cluster: DeploymentCluster) -> None:
    dag_id = "fal_dep_restart"
    tasks = ("poll", "stream", "webhook")
    run_id = cluster.trigger_run(dag_id)
    for task_id in tasks:
        cluster.wait_for_task_state(dag_id, run_id, task_id, "deferred", timeout=150)
    time.sleep(3)  # the triggerer has picked up all three triggers (stream connected, poll polling)

    (cluster.home / "triggerer.log").rename(cluster.home / "triggerer-killed.log")
    cluster.kill("triggerer")
    assert set(cluster.task_states(dag_id, run_id).values()) == {"deferred"}
    time.sleep(2)
    cluster.start("triggerer")

    states = finish(cluster, dag_id, run_id, timeout=240)
    assert set(states.values()) == {"success"}
    for task_id in tasks:
        assert len(submits_of(cluster, run_id, task_id)) == 1, f"{task_id} paid for more than one request"
        assert cluster.try_number(dag_id, run_id, task_id) == 1
    results = cluster.xcoms(dag_id, run_id)
    assert {results[(t, -1)]["marker"] for t in tasks} == {f"{run_id}/{t}" for t in tasks}
