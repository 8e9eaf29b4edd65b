"""Every example DAG end to end: ``airflow dags test`` against the fal emulator, plus one run
through a real scheduler + triggerer (separate processes, SQLite) to prove the trigger works
outside ``dag.test()``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import AirflowEnv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fal-example-output")


@pytest.fixture(scope="module")
def airflow(emulator: FalEmulator, output_dir: Path) -> Iterator[AirflowEnv]:
    env = AirflowEnv(
        env={
            "AIRFLOW_CONN_FAL_DEFAULT": emulator.connection_json(),
            "FAL_EXAMPLE_OUTPUT_DIR": str(output_dir),
        }
    )
    try:
        env.migrate()
        yield env
    finally:
        env.cleanup()


def run_dag(airflow: AirflowEnv, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, dict]:
    airflow.dags_test(dag_id, conf=conf)
    run_id = airflow.latest_run_id(dag_id)
    states = airflow.task_states(dag_id, run_id)
    assert airflow.run_state(dag_id, run_id) == "success", states
    return run_id, airflow.xcoms(dag_id, run_id)


def local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_pipeline(airflow: AirflowEnv, emulator: FalEmulator, output_dir: Path) -> None:
    emulator.reset()  # the billed total below is this run's alone
    run_id, xcoms = run_dag(airflow, "fal_pipeline", {"prompt": "a red barn", "output_dir": str(output_dir)})
    generated = xcoms[("text_to_image", -1)]
    assert generated["prompt"] == "a red barn" and generated["seed"] == 7
    assert generated["images"][0]["url"].startswith(emulator.cdn_url)
    upscaled = xcoms[("upscale", -1)]  # select="image": only the file object
    assert set(upscaled) >= {"url", "width", "height"} and "images" not in upscaled
    assert (upscaled["width"], upscaled["height"]) == (
        2 * generated["images"][0]["width"],
        2 * generated["images"][0]["height"],
    )
    caption = xcoms[("caption", -1)]
    assert f"{upscaled['width']} by {upscaled['height']} pixels" in caption  # fed by the upscale output
    report = xcoms[("write_report", -1)]
    saved = json.loads(Path(report["report"]).read_text())
    assert saved["caption"] == caption and saved["prompt"] == "a red barn"
    for name in ("generated.png", "upscaled.png"):
        assert Path(report[name]).read_bytes().startswith(PNG_MAGIC)
    assert Path(report["folder"]).is_relative_to(output_dir)
    # the extra link was materialised for the deferred tasks: the emulator's page for the request
    links = airflow.xcoms("fal_pipeline", run_id, key="fal_request_url")
    assert links[("text_to_image", -1)].startswith(f"{emulator.base_url}/_emulator/requests/")
    # What the run says it cost is what the emulator billed, request by request and in total.
    cost = xcoms[("cost", -1)]
    billing = emulator.billing()
    assert cost["requests"] == billing["count"] == 3 and cost["unknown"] == 0
    assert cost["total"] == pytest.approx(billing["total"], abs=1e-9) and cost["total"] > 0
    records = airflow.xcoms("fal_pipeline", run_id, key="fal_cost")
    billed = {e["request_id"]: e for e in billing["events"]}
    for (task_id, _), record in records.items():
        event = billed[record["request_id"]]
        assert record["cost"] == pytest.approx(event["cost_total"], abs=1e-12), task_id
        assert event["tags"] == {"airflow.dag": "fal_pipeline", "airflow.task": task_id}


def test_fan_out(airflow: AirflowEnv, emulator: FalEmulator) -> None:
    prompts = ["one", "two", "three", "four"]
    _, xcoms = run_dag(airflow, "fal_fan_out", {"prompts": prompts})
    mapped = {k: v for k, v in xcoms.items() if k[0] == "generate"}
    assert sorted(i for _, i in mapped) == [0, 1, 2, 3]
    assert all(isinstance(url, str) and url.startswith(emulator.cdn_url) for url in mapped.values())
    collected = xcoms[("collect", -1)]
    assert collected["count"] == 4 and list(collected["images"]) == prompts
    assert len(set(collected["images"].values())) == 4  # different prompts, different images


def test_submit_sensor_result(airflow: AirflowEnv, output_dir: Path) -> None:
    run_id, xcoms = run_dag(airflow, "fal_submit_sensor_result", {"output_dir": str(output_dir)})
    ref = xcoms[("submit", -1)]
    assert ref["app_id"] == "fal-ai/flux/dev" and ref["request_id"]
    assert xcoms[("wait", -1)]["request_id"] == ref["request_id"]
    manifest = xcoms[("result", -1)]
    assert manifest["request_id"] == ref["request_id"] and manifest["media_count"] == 1
    result = json.loads(local(manifest["result_path"]).read_text())
    copy = local(manifest["selected"])  # select="images.0.url" after the URL rewrite
    assert copy.read_bytes().startswith(PNG_MAGIC)
    assert result["images"][0]["url"] == manifest["selected"]
    assert result["images"][0]["fal_url"].startswith("http")
    states = airflow.task_states("fal_submit_sensor_result", run_id)
    assert states[("cancel_on_failure", -1)] == "skipped"


def test_deferred_task_through_real_scheduler_and_triggerer(
    airflow: AirflowEnv, emulator: FalEmulator, output_dir: Path
) -> None:
    """Scheduler, triggerer, dag-processor and api-server as separate processes on SQLite."""
    dag_id = "fal_submit_sensor_result"
    # flux/dev then takes ~12 s, so the sensor defers and its trigger fires well after the worker
    # process that deferred it has been reaped. A trigger that fires within a second of the defer can
    # meet the scheduler still handling that process's exit and the resumed try is failed by Airflow
    # ("Cannot start Task Instance in invalid state"), seen on 3.1 and 3.3 with a 4 s request.
    emulator.configure(latency_scale=60)
    try:
        airflow.start("api-server", "dag-processor", "scheduler", "triggerer")
        airflow.run("dags", "reserialize")
        airflow.run("dags", "unpause", dag_id)
        run_id = airflow.trigger(dag_id, {"output_dir": str(output_dir)})
        state = airflow.wait_for_run(dag_id, run_id, timeout=300)
        states = airflow.task_states(dag_id, run_id)
        # The run alone is not enough: ``cancel_on_failure`` is a leaf that succeeds when ``wait`` fails.
        assert state == "success", f"{states}{airflow.component_logs()}"
        assert states[("wait", -1)] == "success", f"{states}{airflow.component_logs()}"
        assert states[("result", -1)] == "success", f"{states}{airflow.component_logs()}"
        trigger_logs = list(
            airflow.home.glob(f"logs/dag_id={dag_id}/run_id={run_id}/task_id=wait/*.trigger.*")
        )
        assert trigger_logs, "the sensor never ran in the triggerer"
        text = "\n".join(p.read_text() for p in trigger_logs)
        # The trigger's own status line: Airflow 3.1 names triggers in this log by task, not by class.
        assert " is COMPLETED" in text and "'status': 'success'" in text
        manifest = _wait_for_xcom(airflow, dag_id, run_id, "result")
        assert local(manifest["selected"]).read_bytes().startswith(PNG_MAGIC)
    finally:
        emulator.configure(latency_scale=1.0)
        airflow.stop()


def _wait_for_xcom(airflow: AirflowEnv, dag_id: str, run_id: str, task_id: str, timeout: float = 30) -> Any:
    """The task's return value, read from the metadata DB once it is visible there.

    One CI run on SQLite saw the run already ``success`` while the XCom row was not yet readable
    by a separate connection; waiting a little separates that from a value that never arrives,
    and the failure message then shows every XCom row of the run to explain it.
    """
    deadline = time.monotonic() + timeout
    while True:
        xcoms = airflow.xcoms(dag_id, run_id)
        if (task_id, -1) in xcoms:
            return xcoms[(task_id, -1)]
        if time.monotonic() > deadline:
            rows = airflow.query("SELECT task_id, map_index, key FROM xcom WHERE run_id=?", [run_id])
            raise AssertionError(
                f"no return value of {task_id} after {timeout}s; xcom rows {rows}; "
                f"tasks {airflow.task_states(dag_id, run_id)}{airflow.component_logs()}"
            )
        time.sleep(1)
