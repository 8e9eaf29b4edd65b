"""``@task.fal``, OpenLineage and assets through a real ``airflow dags test``: the example DAGs run
against the emulator with the OpenLineage provider's file transport, and the events say what each
fal task read and wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import AirflowEnv

pytest.importorskip("airflow.providers.openlineage")

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fal-lineage-output")


@pytest.fixture(scope="module")
def events_file(output_dir: Path) -> Path:
    return output_dir / "openlineage.jsonl"


@pytest.fixture(scope="module")
def airflow(emulator: FalEmulator, output_dir: Path, events_file: Path) -> Iterator[AirflowEnv]:
    env = AirflowEnv(
        env={
            "AIRFLOW_CONN_FAL_DEFAULT": emulator.connection_json(),
            "FAL_EXAMPLE_OUTPUT_DIR": str(output_dir),
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "fal-tests",
            # the listener emits from a forked child with this budget; the test machine is slow
            "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",
        }
    )
    try:
        env.migrate()
        yield env
    finally:
        env.cleanup()


def completed(events_file: Path, job: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    return [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == job]


def names(datasets: list[dict[str, Any]]) -> set[str]:
    return {f"{d['namespace']}{d['name']}" if d["namespace"] != "file" else d["name"] for d in datasets}


def test_taskflow_dag_and_its_lineage(airflow: AirflowEnv, emulator: FalEmulator, events_file: Path) -> None:
    dag_id = "example_fal_taskflow"
    airflow.dags_test(dag_id, timeout=600)
    run_id = airflow.latest_run_id(dag_id)
    assert airflow.run_state(dag_id, run_id) == "success", airflow.task_states(dag_id, run_id)
    xcoms = airflow.xcoms(dag_id, run_id)
    rendered = [xcoms[("render", i)] for i in (0, 1)]
    upscaled = [xcoms[("upscale", i)] for i in (0, 1)]
    assert all(url.startswith(emulator.cdn_url) for url in rendered + upscaled)  # XCom is the result
    assert xcoms[("collect", -1)] == {"count": 2, "images": upscaled}
    assert emulator.stats()["submits"] == {"fal-ai/flux/schnell": 2, "fal-ai/esrgan": 2}

    requests = airflow.xcoms(dag_id, run_id, key="fal_request")
    upscale_events = completed(events_file, f"{dag_id}.upscale")
    assert len(upscale_events) == 2
    for event in upscale_events:
        facet = event["run"]["facets"]["fal"]
        assert facet["appId"] == "fal-ai/esrgan" and facet["metrics"]["inference_time"] >= 0
        by_request = {requests[("upscale", i)]["request_id"]: i for i in (0, 1)}
        index = by_request[facet["requestIds"][0]]
        # the input is the image the render task produced; the output the upscaled one
        assert names(event["inputs"]) == {rendered[index]}, event["inputs"]
        assert names(event["outputs"]) == {upscaled[index]}
    render_events = completed(events_file, f"{dag_id}.render")
    assert {next(iter(names(e["outputs"]))) for e in render_events} == set(rendered)


def test_output_path_files_are_lineage_and_asset_events(
    airflow: AirflowEnv, emulator: FalEmulator, events_file: Path
) -> None:
    dag_id = "fal_generate_images"
    airflow.dags_test(dag_id, timeout=600)
    run_id = airflow.latest_run_id(dag_id)
    assert airflow.run_state(dag_id, run_id) == "success", airflow.task_states(dag_id, run_id)
    manifest = airflow.xcoms(dag_id, run_id)[("generate", -1)]
    written = [manifest["result_path"], *(item["path"] for item in manifest["media"])]
    assert all(Path(path).is_file() for path in written)

    (event,) = completed(events_file, f"{dag_id}.generate")
    assert set(written) <= names(event["outputs"])
    assert event["run"]["facets"]["fal"]["requestIds"] == [manifest["request_id"]]

    # the outlet's asset event carries the files; the consumer DAG is scheduled on that asset
    extras = [json.loads(row[0]) for row in airflow.query("SELECT extra FROM asset_event")]
    (extra,) = [e for e in extras if manifest["request_id"] in e.get("fal_request_ids", [])]
    assert extra["files"] == written and extra["fal_app_id"] == "fal-ai/flux/schnell"
    scheduled = airflow.query(
        "SELECT r.dag_id FROM dag_schedule_asset_reference r JOIN asset a ON a.id = r.asset_id WHERE a.name = ?",
        ["fal_generated_images"],
    )
    assert scheduled == [("fal_on_new_images",)]
