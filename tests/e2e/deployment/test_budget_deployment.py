"""A shared budget under a real scheduler on PostgreSQL: ten mapped tasks start together and race
for a limit that fits four. Exactly four are submitted (the emulator's count), the other six fail
with ``FalBudgetExceeded`` on their first try (permanent: no retries spent), and the ledger row
holds the four actual costs with nothing left reserved.

The running totals live in this module's own Airflow metadata database (``[fal]
budget_database_url`` pointed at it), in the provider's table beside Airflow's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.deployment.cluster import DeploymentCluster
from tests.e2e.deployment.conftest import Services
from tests.e2e.deployment.dags.fal_budget_dags import BUDGET_LIMIT, BUDGET_TASKS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

DATABASE = "airflow_test_budget_deployment"
PRICE = 0.0001  # emulator/echo, per request
FITS = 4  # 4 x 0.0001 <= 0.00045 < 5 x 0.0001


@pytest.fixture(scope="module")
def cluster(deployment_services: Services) -> Iterator[DeploymentCluster]:
    env = {
        "AIRFLOW__FAL__BUDGET_DATABASE_URL": deployment_services.pg.sqlalchemy_url(DATABASE),
        "AIRFLOW__CORE__PARALLELISM": str(BUDGET_TASKS),  # all ten run at once
    }
    with deployment_services.airflow(DATABASE, env=env) as airflow:
        yield airflow


def test_ten_parallel_tasks_cannot_overrun_a_budget_that_fits_four(cluster: DeploymentCluster) -> None:
    dag_id = "fal_budget_fanout"
    cluster.wait_for_dags([dag_id])
    run_id = cluster.trigger_run(dag_id)

    state = cluster.wait_for_run(dag_id, run_id, timeout=300)
    states = Counter(s for (task, _), s in cluster.task_states(dag_id, run_id).items() if task == "infer")
    submits = cluster.emulator.requests_with_marker(run_id)

    assert state == "failed", cluster.component_logs()
    assert len(submits) == FITS, f"{len(submits)} submissions for a budget that fits {FITS}"
    assert states == {"success": FITS, "failed": BUDGET_TASKS - FITS}, states
    tries = cluster.query(
        "SELECT state, try_number FROM task_instance WHERE dag_id=? AND run_id=? AND task_id='infer'",
        [dag_id, run_id],
    )
    assert {t for s, t in tries if s == "failed"} == {1}, f"a budget refusal must spend no retries: {tries}"
    ((spent, reserved, limit),) = cluster.query(
        "SELECT spent, reserved, limit_amount FROM fal_provider_budget WHERE name=?",
        [f"fanout@{dag_id}/{run_id}"],
    )
    assert spent == pytest.approx(FITS * PRICE) and reserved == pytest.approx(0.0, abs=1e-12)
    assert limit == BUDGET_LIMIT
    logs = "".join(p.read_text(errors="replace") for p in (cluster.home / "logs").rglob("*.log"))
    assert logs.count("FalBudgetExceeded") >= BUDGET_TASKS - FITS, "the failures are budget refusals"
