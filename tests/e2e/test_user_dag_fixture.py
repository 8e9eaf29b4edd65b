"""What the README promises users: their own DAG, ``dag.test()`` in pytest, the emulator fixtures.

The DAG file lives in the dags folder, as a user's does (Airflow 3 runs ``dag.test()`` on the DAG
as parsed from its bundle), and runs in this process against the session emulator.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator

pytestmark = pytest.mark.e2e

USER_DAG = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG

    from fal_provider.operators.fal import FalInferenceOperator

    with DAG("user_dag_with_fal", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        image = FalInferenceOperator(
            task_id="image",
            app_id="fal-ai/flux/schnell",
            arguments={"prompt": "a red barn", "seed": 3},
            select="images.0.url",
        )
        # The README's chaining example: an XComArg nested in the arguments dict.
        FalInferenceOperator(
            task_id="upscale",
            app_id="fal-ai/esrgan",
            arguments={"image_url": image.output, "scale": 2},
            select="image",
        )
    """
)


@pytest.fixture(scope="module")
def user_dag() -> Any:
    from airflow.utils import db

    db.initdb()
    dags = Path(os.environ["AIRFLOW_HOME"]) / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    path = dags / "user_dag_with_fal.py"
    path.write_text(USER_DAG)
    spec = importlib.util.spec_from_file_location("user_dag_with_fal", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_user_dag_runs_against_the_emulator_fixture(user_dag: Any, fal_emulator_conn: FalEmulator) -> None:
    run = user_dag.test()
    assert run.state == "success"
    assert fal_emulator_conn.stats()["submits"] == {"fal-ai/flux/schnell": 1, "fal-ai/esrgan": 1}
    states = {t.task_id: t.state for t in run.get_task_instances()}
    assert states == {"image": "success", "upscale": "success"}
