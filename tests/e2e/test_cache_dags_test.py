"""The example pipeline with the result cache, through real ``airflow dags test`` runs.

A rerun with the same prompt makes no submission and reports nothing spent; dropping one task's
cache entry pays for that task only (the emulator draws the same image for the same prompt and
seed, and the cache names copies by content, so the steps after it see the same inputs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fal_provider.cache import ResultCache
from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import AirflowEnv

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]  # three pipeline runs

DAG_ID = "fal_pipeline"
MODEL_TASKS = ("text_to_image", "upscale", "caption")
CONF = {"prompt": "a lighthouse, cached"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator(latency_scale=0) as emu:
        yield emu


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fal-cache")


@pytest.fixture(scope="module")
def airflow(
    emulator: FalEmulator, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowEnv]:
    env = AirflowEnv(
        env={
            "AIRFLOW_CONN_FAL_DEFAULT": emulator.connection_json(),
            "FAL_EXAMPLE_OUTPUT_DIR": str(tmp_path_factory.mktemp("out")),
            "FAL_EXAMPLE_CACHE_PATH": str(cache_dir),
        }
    )
    try:
        env.migrate()
        yield env
    finally:
        env.cleanup()


def run(airflow: AirflowEnv, emulator: FalEmulator) -> tuple[int, dict[Any, Any], str, str]:
    """One pipeline run: submissions it made, its XComs, its run id and its output."""
    before = emulator.stats()["submits_total"]
    proc = airflow.dags_test(DAG_ID, conf=CONF)
    run_id = airflow.latest_run_id(DAG_ID)
    assert airflow.run_state(DAG_ID, run_id) == "success", airflow.task_states(DAG_ID, run_id)
    return (
        emulator.stats()["submits_total"] - before,
        airflow.xcoms(DAG_ID, run_id),
        run_id,
        proc.stdout + proc.stderr,
    )


def test_a_rerun_pays_nothing_and_clearing_one_entry_pays_for_that_task_only(
    airflow: AirflowEnv, emulator: FalEmulator, cache_dir: Path
) -> None:
    paid, first, _, _ = run(airflow, emulator)
    assert paid == 3
    assert first[("text_to_image", -1)]["images"][0]["url"].startswith(f"file://{cache_dir}/media/")
    assert first[("upscale", -1)]["url"].startswith(f"file://{cache_dir}/media/")

    billed = emulator.billed_total()
    assert billed > 0
    paid, second, run_id, output = run(airflow, emulator)
    assert paid == 0, "the rerun submitted requests for inputs already in the cache"
    assert emulator.billed_total() == billed, "the rerun was billed"
    for task in MODEL_TASKS:
        assert second[(task, -1)] == first[(task, -1)]
    hits = max(output.count("cache hit, saved ~"), _logs_say(airflow, run_id, "cache hit, saved ~"))
    assert hits >= len(MODEL_TASKS), output[-4000:]
    costs = airflow.xcoms(DAG_ID, run_id, key="fal_cost")
    assert {task for task, _ in costs} >= set(MODEL_TASKS)
    assert sum(costs[(task, -1)]["cost"] for task in MODEL_TASKS) == 0  # spent nothing
    report = second[("write_report", -1)]
    assert Path(report["upscaled.png"]).read_bytes().startswith(b"\x89PNG")

    cache = ResultCache(cache_dir)
    [entry] = [e for e in cache.entries() if e.app_id == "fal-ai/flux/schnell"]
    assert cache.delete(entry.key)
    paid, third, _, _ = run(airflow, emulator)
    assert paid == 1, "only the task whose entry was dropped should pay"
    assert emulator.billed_total() > billed
    assert third[("caption", -1)] == first[("caption", -1)]


def _logs_say(airflow: AirflowEnv, run_id: str, text: str) -> int:
    logs = airflow.home.glob(f"logs/dag_id={DAG_ID}/run_id={run_id}/task_id=*/*.log")
    return sum(path.read_text(errors="replace").count(text) for path in logs)
