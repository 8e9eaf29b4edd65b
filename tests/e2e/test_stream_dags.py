"""The streaming and realtime example DAGs, run by ``airflow dags test`` against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import AirflowEnv

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: FalEmulator) -> Iterator[AirflowEnv]:
    env = AirflowEnv(env={"AIRFLOW_CONN_FAL_DEFAULT": emulator.connection_json()})
    try:
        env.migrate()
        yield env
    finally:
        env.cleanup()


def run_dag(airflow: AirflowEnv, dag_id: str, conf: dict[str, Any] | None = None) -> dict[Any, Any]:
    proc = airflow.dags_test(dag_id, conf=conf, timeout=300)
    run_id = airflow.latest_run_id(dag_id)
    states = airflow.task_states(dag_id, run_id)
    assert airflow.run_state(dag_id, run_id) == "success", (states, proc.stdout[-4000:])
    return airflow.xcoms(dag_id, run_id)


def test_stream_dag_feeds_the_final_answer_downstream(airflow: AirflowEnv, emulator: FalEmulator) -> None:
    before = emulator.stats()["stream_calls"]
    xcoms = run_dag(
        airflow, "example_fal_stream", {"prompt": "why is the sky blue", "topics": ["tides", "ice"]}
    )

    answer = xcoms[("ask_llm", -1)]
    assert isinstance(answer, str) and "why is the sky blue" in answer, "select='output' keeps the text only"
    assert xcoms[("summarize", -1)] == {"words": len(answer.split()), "answer": answer}

    facts = [xcoms[("topic_facts", 0)], xcoms[("topic_facts", 1)]]
    assert "One fact about tides." in facts[0] and "One fact about ice." in facts[1]
    report = xcoms[("report", -1)]
    assert report["facts"] == facts
    assert report["hook_answer"] == answer, "TaskFlow + FalHook.stream sees the same final event"
    assert report["hook_events"] > 3
    assert emulator.stats()["stream_calls"] - before == 4  # ask_llm, two mapped, one TaskFlow


def test_realtime_dag_returns_one_output_per_input_in_order(
    airflow: AirflowEnv, emulator: FalEmulator
) -> None:
    before = emulator.stats()
    xcoms = run_dag(airflow, "example_fal_realtime", {"frames": 30})

    outputs = xcoms[("realtime_batch", -1)]
    assert [(o["prompt"], o["seed"]) for o in outputs] == [(f"frame {i}", i) for i in range(30)]
    first_image = outputs[0]["images"][0]
    assert (first_image["width"], first_image["height"], first_image["content_type"]) == (
        128,
        128,
        "image/jpeg",
    )
    assert httpx.get(first_image["url"]).content.startswith(b"\xff\xd8"), "a real JPEG on the emulator CDN"
    assert len({o["images"][0]["url"] for o in outputs}) == 30
    assert xcoms[("check_order", -1)] == {"count": 30, "in_order": True, "first": outputs[0]}
    hook_answers = xcoms[("realtime_with_hook", -1)]
    assert [(a["prompt"], a["seed"]) for a in hook_answers] == [("hello", s) for s in range(3)]
    after = emulator.stats()
    assert after["realtime_sessions"] - before["realtime_sessions"] == 2, "one session per task"
    assert after["realtime_messages"] - before["realtime_messages"] == 33


def test_realtime_dag_still_runs_against_the_echo_app(airflow: AirflowEnv) -> None:
    xcoms = run_dag(airflow, "example_fal_realtime", {"frames": 3, "app_id": "emulator/realtime"})

    expected = [{"prompt": f"frame {i}", "seed": i, "image_size": "square"} for i in range(3)]
    assert xcoms[("realtime_batch", -1)] == expected
    assert xcoms[("check_order", -1)] == {"count": 3, "in_order": True, "first": expected[0]}
