"""High availability: two triggerers and two api-servers (behind a load balancer) on PostgreSQL.

Three deferrable tasks wait for fal in poll, stream and webhook mode. While they wait, the
triggerer that holds most of their triggers and one api-server are SIGKILLed together. The
surviving triggerer must take the orphaned triggers over (Airflow reassigns a triggerer's triggers
once its heartbeat is older than ``triggerer_health_check_threshold``), the webhook must reach the
surviving api-server through the load balancer and resume its task there, and the workers must
finish through the survivor's Execution API. Every task succeeds on its first try with exactly one
fal submission: nothing in a failover may submit again.

The emulator keeps the three requests queued until the failover is over: ``emulator/echo`` runs one
request at a time and a request submitted by the test holds that slot, so the outcome does not
depend on how fast a loaded machine gets the tasks to defer. Raising the app's concurrency lets
them run.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from tests.e2e.deployment.cluster import DeploymentCluster
from tests.e2e.deployment.conftest import Services
from tests.e2e.harness import AirflowCommandError

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    # Tried on 3.1.8: once the orphaned triggers had moved and the tasks resumed, the surviving 3.1
    # triggerer's runner died with "Response read out of order!" (its Task SDK channel desynchronised
    # while several triggers were cancelled at once) and the triggerer exited: an Airflow 3.1 fault.
    pytest.mark.skipif(
        not AIRFLOW_V_3_3_PLUS, reason="Airflow < 3.3: the surviving triggerer crashes (see above)"
    ),
]

DAG_ID = "fal_dep_ha"
APP_ID = "emulator/echo"
TASKS = ("poll", "stream", "webhook")
KILLED_API_SERVER = "api-server"
SURVIVING_API_SERVER = "api-server-2"
#: Seconds the surviving triggerer gets to resume an orphaned wait once the trigger is its own.
TAKEOVER_S = 180


@pytest.fixture(scope="module")
def ha_cluster(deployment_services: Services) -> Iterator[DeploymentCluster]:
    with deployment_services.airflow("airflow_ha", api_servers=2, triggerers=2) as airflow:
        yield airflow


@pytest.fixture
def held_app(ha_cluster: DeploymentCluster) -> Iterator[str]:
    """``emulator/echo`` with its one runner slot taken: new requests stay queued until released.

    The holding request is left to end on its own (cancelling it would count as a cancel in the
    emulator the session shares); the app's concurrency is restored either way.
    """
    emulator = ha_cluster.emulator
    emulator.configure(app_concurrency={APP_ID: 1})
    try:
        emulator.submit(APP_ID, {"duration_s": 600, "marker": "ha/slot-holder"})
        yield APP_ID
    finally:
        emulator.configure(app_concurrency={APP_ID: emulator.concurrency})


def live_triggerers(cluster: DeploymentCluster) -> dict[str, int]:
    """Triggerer label (its reported hostname) -> Job id, for triggerers Airflow considers alive."""
    rows = cluster.query(
        "SELECT hostname, id FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL "
        "AND latest_heartbeat > now() - interval '6 seconds'"
    )
    return {str(hostname): int(job_id) for hostname, job_id in rows}


def trigger_holders(cluster: DeploymentCluster, run_id: str) -> dict[str, str | None]:
    """Deferred task -> label of the triggerer its trigger is assigned to (None: unassigned)."""
    rows = cluster.query(
        'SELECT ti.task_id, j.hostname FROM task_instance ti JOIN "trigger" t ON t.id = ti.trigger_id '
        "LEFT JOIN job j ON j.id = t.triggerer_id "
        "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.state = 'deferred'",
        [DAG_ID, run_id],
    )
    return {str(task_id): hostname for task_id, hostname in rows}


def submits_of(cluster: DeploymentCluster, run_id: str, task_id: str) -> list[dict[str, Any]]:
    return cluster.emulator.requests_with_marker(f"{run_id}/{task_id}")


def survivor_waited(cluster: DeploymentCluster, seen: Callable[[], bool], what: str) -> bool:
    """Wait up to TAKEOVER_S for the survivor's first call; a stalled loop is reported, not failed."""
    try:
        cluster.wait_for(seen, TAKEOVER_S, f"the survivor {what}")
    except AirflowCommandError:
        warnings.warn(f"the surviving triggerer had not yet {what} after {TAKEOVER_S} s", stacklevel=2)
        return False
    return True


def test_a_triggerer_and_an_api_server_die_while_tasks_wait(
    ha_cluster: DeploymentCluster, held_app: str
) -> None:
    cluster = ha_cluster
    assert cluster.balancer is not None
    cluster.wait_for_dags([DAG_ID])
    cluster.wait_for(
        lambda: set(live_triggerers(cluster)) == set(cluster.triggerers), 120, "both triggerers heartbeating"
    )
    before = cluster.emulator.stats()
    run_id = cluster.trigger_run(DAG_ID)

    def all_assigned() -> dict[str, str | None] | None:
        held = trigger_holders(cluster, run_id)
        return held if set(held) == set(TASKS) and all(held.values()) else None

    def poll_calls() -> int:
        return int(cluster.emulator.stats()["status_calls"]["by_request"].get(requests["poll"], 0))

    def stream_calls() -> int:
        return int(cluster.emulator.stats()["status_stream_calls"] - before["status_stream_calls"])

    # Every task deferred with its trigger assigned, then the triggers running: the poll trigger
    # has polled (beyond the operator's check before deferring), the stream trigger has connected.
    holders = cluster.wait_for(all_assigned, 240, "every task deferred with its trigger assigned")
    requests = {task_id: cluster.request_of(DAG_ID, run_id, task_id) for task_id in TASKS}
    cluster.wait_for(
        lambda: poll_calls() >= 2 and stream_calls() >= 1, 60, "poll and stream triggers running"
    )

    victim = Counter(holders.values()).most_common(1)[0][0]
    assert victim is not None
    survivor = next(label for label in cluster.triggerers if label != victim)
    orphaned = {task_id for task_id, holder in holders.items() if holder == victim}
    victim_port = cluster.api_ports[KILLED_API_SERVER]
    survivor_port = cluster.api_ports[SURVIVING_API_SERVER]

    cluster.kill(victim)
    cluster.kill(KILLED_API_SERVER)
    killed_at = time.time()
    forwarded_at_kill, _ = cluster.balancer.counts()
    stream_calls_at_kill, poll_calls_at_kill = stream_calls(), poll_calls()

    # The survivor takes the orphaned triggers over; the tasks are still waiting meanwhile.
    cluster.wait_for(
        lambda: all(trigger_holders(cluster, run_id).get(t) == survivor for t in orphaned),
        90,
        f"{sorted(orphaned)} reassigned from {victim} to {survivor}",
    )
    assert set(cluster.task_states(DAG_ID, run_id).values()) == {"deferred"}
    # A loaded 3.3 triggerer can stall at its first Execution API call after taking triggers over
    # ("event loop appears deadlocked": 40-50 s seen, and past 180 s in CI beside the floor suite).
    # Seeing the survivor's first poll or stream before the requests run is only ordering: the proof
    # of the takeover is below (every request started after the kill, and every task still succeeded
    # on its first try with one submission, which only the survivor could have seen).
    if "poll" in orphaned:
        survivor_waited(cluster, lambda: poll_calls() > poll_calls_at_kill, "polls the orphaned request")
    if "stream" in orphaned:
        survivor_waited(cluster, lambda: stream_calls() > stream_calls_at_kill, "reopens the stream")

    cluster.emulator.configure(app_concurrency={held_app: cluster.emulator.concurrency})  # the requests run
    state = cluster.wait_for_run(DAG_ID, run_id, timeout=240)
    states = cluster.task_states(DAG_ID, run_id)
    assert state == "success", f"{states}{cluster.component_logs()}"
    assert set(states.values()) == {"success"}

    for task_id, request_id in requests.items():
        assert len(submits_of(cluster, run_id, task_id)) == 1, f"{task_id} paid for more than one request"
        assert cluster.try_number(DAG_ID, run_id, task_id) == 1, f"{task_id} needed a retry"
        started_at = cluster.emulator.request_info(request_id)["timings"]["started_at"]
        assert started_at > killed_at, f"{task_id}'s request ran before the kill: the failover was not tested"
    results = cluster.xcoms(DAG_ID, run_id)
    assert {results[(t, -1)]["marker"] for t in TASKS} == {f"{run_id}/{t}" for t in TASKS}

    # The callback went through the load balancer to the surviving api-server, which resumed the task.
    webhook_request = requests["webhook"]
    events = cluster.emulator.request_info(webhook_request)["webhook_events"]
    delivered = [e for e in events if e["event"] == "success"]
    assert delivered and delivered[0]["url"].startswith(cluster.balancer.url), events
    recorded = f"fal webhook recorded for request {webhook_request} (status OK); task resumed"
    survivor_log = cluster.log_text(SURVIVING_API_SERVER)
    assert recorded in survivor_log, survivor_log[-4000:]
    assert webhook_request not in cluster.log_text(KILLED_API_SERVER)
    forwarded, refused = cluster.balancer.counts()
    assert forwarded.get(victim_port, 0) == forwarded_at_kill.get(victim_port, 0)
    assert forwarded.get(survivor_port, 0) > forwarded_at_kill.get(survivor_port, 0)
    assert refused.get(victim_port, 0) > 0, "the balancer never had to fail over"

    assert cluster.emulator.stats()["cancels"] == before["cancels"], "a failover cancelled a fal request"
