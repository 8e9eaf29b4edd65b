"""The human-review example end to end: a person answers each round through Airflow's REST API.

Two runs go side by side (one cluster, no extra wall time): one is approved in round 1; the other
is rejected with feedback, regenerated, and rejected again, so it uses every round and stops there.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.deployment.ui.conftest import UICluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DAG_ID = "example_fal_human_review"
#: the emulator's fast text-to-image model; the DAG's default is fal-ai/flux/schnell
CONF = {"app_id": "fal-ai/fast-lcm-diffusion", "num_images": 1}
FEEDBACK = "make the sky red"


def _hitl_path(run_id: str, round_no: int) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/review_{round_no}/-1/hitlDetails"


#: where a review task waits: Airflow 3.3 parks it, 3.1/3.2 defer it to the HITL trigger
WAITING_STATES = ("awaiting_input", "deferred")


def _wait_review(cluster: UICluster, run_id: str, round_no: int) -> dict[str, Any]:
    """The review once its task waits for a person (its rendered body included).

    The task writes the review before it parks; Airflow 3.3.2 resumes a task on an answer only if
    the task is already parked, so (like a person, who sees the review once it waits) the test
    answers only then.
    """

    def pending() -> dict[str, Any] | None:
        if not _parked(cluster, run_id, round_no):
            return None
        response = cluster.api("GET", _hitl_path(run_id, round_no))
        body = response.json() if response.status_code == 200 else {}
        return body if body.get("body") and not body.get("response_received") else None

    return cluster.wait_for(pending, 240, f"{run_id}: review_{round_no} waiting for a person")


def _parked(cluster: UICluster, run_id: str, round_no: int) -> bool:
    """The review task waits for a person, and the scheduler has seen the process that parked it
    exit: an answer before that can be failed by Airflow's stale "finished" report (see
    :meth:`~tests.e2e.harness.AirflowEnv.executor_released`); a person never answers that fast."""
    task_id = f"review_{round_no}"
    return cluster.task_states(DAG_ID, run_id).get((task_id, -1)) in WAITING_STATES and (
        cluster.executor_released(DAG_ID, run_id, task_id, WAITING_STATES)
    )


def _params_input(cluster: UICluster, run_id: str, round_no: int, feedback: str) -> dict[str, Any]:
    """Every param the review asks for, ``feedback`` set and the rest as shown, as the UI's form sends.

    Airflow refuses an answer whose keys differ from the review task's params, and on 3.1 those
    include the DAG's params (prompt, seed, ...), not only the review's own ``feedback``.
    """
    shown = cluster.api("GET", _hitl_path(run_id, round_no)).json()["params"]
    answer = {key: param.get("value") for key, param in shown.items()}
    assert "feedback" in answer, shown
    answer["feedback"] = feedback
    return answer


def _answer(cluster: UICluster, run_id: str, round_no: int, option: str, feedback: str = "") -> None:
    """Answer the review and wait until its task took the answer.

    The example retries a task once (under load Airflow can fail a resumed task whose process
    exited before its success was recorded); a retried review asks again, and gets the same answer.
    """
    body = {"chosen_options": [option], "params_input": _params_input(cluster, run_id, round_no, feedback)}
    response = cluster.api("PATCH", _hitl_path(run_id, round_no), json=body)
    assert response.status_code == 200, response.text

    def taken() -> bool:
        state = cluster.task_states(DAG_ID, run_id).get((f"review_{round_no}", -1))
        if state in WAITING_STATES and _parked(cluster, run_id, round_no):
            pending = cluster.api("GET", _hitl_path(run_id, round_no)).json()
            if not pending.get("response_received"):  # a retry asks again
                cluster.api("PATCH", _hitl_path(run_id, round_no), json=body)
        return state == "success"

    cluster.wait_for(taken, 240, f"{run_id}: review_{round_no} resumed with {option}")


def _image_urls(cluster: UICluster, run_id: str, round_no: int) -> list[str]:
    result = cluster.xcoms(DAG_ID, run_id)[(f"generate_{round_no}", -1)]
    return [image["url"] for image in result["images"]]


def test_review_rounds_feedback_and_bound(ui_cluster: UICluster) -> None:
    approved = ui_cluster.trigger_run(DAG_ID, CONF)
    rejected = ui_cluster.trigger_run(DAG_ID, CONF)

    # Round 1 of both: the review shows the generated images as Markdown previews.
    for run_id in (approved, rejected):
        review = _wait_review(ui_cluster, run_id, 1)
        for url in _image_urls(ui_cluster, run_id, 1):
            assert f"]({url})" in review["body"], "the review body previews each generated image"
        assert review["options"] == ["Approve", "Reject", "Regenerate"]
    _answer(ui_cluster, approved, 1, "Approve")
    _answer(ui_cluster, rejected, 1, "Reject", FEEDBACK)

    # Round 2: the rejection's feedback is in the prompt fal was sent.
    _wait_review(ui_cluster, rejected, 2)
    round_2 = ui_cluster.xcoms(DAG_ID, rejected)[("compose_2", -1)]
    assert round_2["prompt"].endswith(f"Reviewer feedback: {FEEDBACK}")
    request_id = ui_cluster.xcoms(DAG_ID, rejected, key="fal_request")[("generate_2", -1)]["request_id"]
    sent = ui_cluster.emulator.request_info(request_id)["arguments"]
    assert sent["prompt"] == round_2["prompt"] and FEEDBACK in sent["prompt"], "fal got the feedback"
    _answer(ui_cluster, rejected, 2, "Regenerate")

    # Round 3 (the last): same prompt, next seed; rejecting it ends the run unpublished.
    _wait_review(ui_cluster, rejected, 3)
    round_3 = ui_cluster.xcoms(DAG_ID, rejected)[("compose_3", -1)]
    assert round_3["prompt"] == round_2["prompt"] and round_3["seed"] == round_2["seed"] + 1
    _answer(ui_cluster, rejected, 3, "Reject", "still not right")

    assert ui_cluster.wait_for_run(DAG_ID, approved, timeout=240) == "success"
    assert ui_cluster.wait_for_run(DAG_ID, rejected, timeout=240) == "success"

    states = ui_cluster.task_states(DAG_ID, approved)
    assert states[("publish", -1)] == "success"
    assert {states[(f"{step}_{n}", -1)] for step in ("compose", "generate", "review") for n in (2, 3)} == {
        "skipped"
    }, "an approval skips the later rounds: nothing more is paid for"
    published = ui_cluster.xcoms(DAG_ID, approved)[("publish", -1)]
    assert published["round"] == 1 and published["images"] == _image_urls(ui_cluster, approved, 1)

    states = ui_cluster.task_states(DAG_ID, rejected)
    assert states[("publish", -1)] == "skipped", "no round approved: nothing published"
    assert all(states[(f"generate_{n}", -1)] == "success" for n in (1, 2, 3))
    assert len(ui_cluster.xcoms(DAG_ID, rejected, key="fal_request")) == 3, "three rounds, three requests"
