"""``airflow dags test`` with the fal connection stored in the metadata database.

There the trigger (run inline) cannot see such a connection. A deferrable task used to submit, fail
in the trigger and leave the paid request running; it must now fail before submitting, saying why
and how to fix it. A worker-side wait (``deferrable=False``) needs no trigger and still works.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import AirflowEnv

pytestmark = pytest.mark.e2e

DAG_FILE = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import DAG

    from fal_provider.operators.fal import FalInferenceOperator

    for deferrable in (True, False):
        with DAG(f"fal_db_conn_deferrable_{deferrable}", schedule=None, start_date=datetime(2025, 1, 1)):
            FalInferenceOperator(
                task_id="infer",
                app_id="emulator/echo",
                arguments={"duration_s": 1},
                deferrable=deferrable,
                poll_interval=0.2,
            )
    """
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator(latency_scale=0) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: FalEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    dags = Path(tmp_path_factory.mktemp("dags"))
    (dags / "fal_db_conn.py").write_text(DAG_FILE)
    env = AirflowEnv(dags_folder=dags)
    try:
        env.migrate()
        env.run("connections", "add", "fal_default", "--conn-json", emulator.connection_json())
        yield env
    finally:
        env.cleanup()


def test_deferrable_task_fails_before_paying_when_the_trigger_cannot_see_the_connection(
    airflow: AirflowEnv, emulator: FalEmulator
) -> None:
    dag_id = "fal_db_conn_deferrable_True"
    before = emulator.stats()["submits_total"]
    proc = airflow.run("dags", "test", dag_id, check=False, timeout=300)
    output = proc.stdout + proc.stderr

    assert airflow.run_state(dag_id, airflow.latest_run_id(dag_id)) == "failed", output[-4000:]
    assert emulator.stats()["submits_total"] == before, "a request was paid for that nobody can wait for"
    assert "nothing was submitted" in output and "AIRFLOW_CONN_FAL_DEFAULT" in output
    assert json.loads(emulator.connection_json())["password"] not in output


def test_worker_side_wait_uses_the_database_connection(airflow: AirflowEnv, emulator: FalEmulator) -> None:
    dag_id = "fal_db_conn_deferrable_False"
    before = emulator.stats()["submits_total"]
    proc = airflow.run("dags", "test", dag_id, check=False, timeout=300)
    run_id = airflow.latest_run_id(dag_id)
    assert airflow.run_state(dag_id, run_id) == "success", (proc.stdout + proc.stderr)[-4000:]
    assert emulator.stats()["submits_total"] == before + 1
    assert airflow.xcoms(dag_id, run_id)[("infer", -1)]["duration_s"] == 1
