"""Generate images, let a person review them, and regenerate with their feedback (Airflow 3.1+).

Each round generates images with fal, then waits for a person in Airflow's human-in-the-loop
review ("Required Actions" in the UI, or the REST API), which shows the images in its Markdown body:

* **Approve**: ``publish`` returns the approved images (their URLs and the prompt that made them);
  later rounds are skipped.
* **Reject**, with feedback: the next round's prompt is the previous one plus the feedback.
* **Regenerate**: the next round uses the same prompt with a new seed.

At most ``MAX_ROUNDS`` rounds run (a person cannot keep it paying forever); if none is approved,
``publish`` is skipped and says so. Airflow 3.1 to 3.3 has no task loops, so the rounds are laid
out in advance and a round after an approval skips itself.

Runs unchanged against the local fal emulator or fal.ai: only the ``fal_default`` connection decides.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Param, task

from fal_provider.operators.fal import FalInferenceOperator

try:
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]

MAX_ROUNDS = 3
APPROVE, REJECT, REGENERATE = "Approve", "Reject", "Regenerate"

REVIEW_BODY = """\
**Round {n} of {max_rounds}.** Prompt: *{{{{ ti.xcom_pull(task_ids='compose_{n}')['prompt'] }}}}*

{{% for image in ti.xcom_pull(task_ids='generate_{n}')['images'] %}}![image {{{{ loop.index }}}}]({{{{ image.url }}}})
{{% endfor %}}
- **{approve}** publishes these images.
- **{reject}** with feedback: the next round adds your feedback to the prompt.
- **{regenerate}**: the next round tries the same prompt with a new seed.
"""


@task
def compose(round_no: int, params: dict[str, Any] | None = None, ti: Any = None) -> dict[str, Any]:
    """The fal arguments of a round, from the DAG params and the previous round's review."""
    params = params or {}
    arguments = {
        "prompt": params["prompt"],
        "seed": int(params["seed"]),
        "num_images": int(params["num_images"]),
        "image_size": "square_hd",
    }
    if round_no == 1:
        return arguments
    review = ti.xcom_pull(task_ids=f"review_{round_no - 1}") or {}
    previous = ti.xcom_pull(task_ids=f"compose_{round_no - 1}")
    choice = (review.get("chosen_options") or [None])[0]
    if choice == APPROVE:
        raise AirflowSkipException(f"Approved in round {round_no - 1}")
    feedback = str((review.get("params_input") or {}).get("feedback") or "").strip()
    prompt = previous["prompt"]
    if choice == REJECT and feedback:
        prompt = f"{prompt}. Reviewer feedback: {feedback}"
    return {**arguments, "prompt": prompt, "seed": previous["seed"] + 1}


@task(trigger_rule="none_failed_min_one_success")
def publish(ti: Any = None) -> dict[str, Any]:
    """The approved round's images; skipped when no round was approved."""
    for round_no in range(1, MAX_ROUNDS + 1):
        review = ti.xcom_pull(task_ids=f"review_{round_no}") or {}
        if review.get("chosen_options") == [APPROVE]:
            images = ti.xcom_pull(task_ids=f"generate_{round_no}")["images"]
            prompt = ti.xcom_pull(task_ids=f"compose_{round_no}")["prompt"]
            approved_by = (review.get("responded_by_user") or {}).get("name")
            print(f"Round {round_no} approved by {approved_by}: {[image['url'] for image in images]}")
            return {"round": round_no, "prompt": prompt, "images": [image["url"] for image in images]}
    raise AirflowSkipException(f"No round of {MAX_ROUNDS} was approved; nothing published")


with DAG(
    dag_id="example_fal_human_review",
    schedule=None,
    catchup=False,
    tags=["fal", "example", "human-in-the-loop"],
    params={
        "prompt": Param("a lighthouse on a cliff at dusk, watercolor", type="string"),
        "app_id": Param("fal-ai/flux/schnell", type="string"),
        "seed": Param(7, type="integer"),
        "num_images": Param(2, type="integer", minimum=1, maximum=4),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    doc_md=__doc__,
) as dag:
    reviews = []
    previous_review = None
    for n in range(1, MAX_ROUNDS + 1):
        arguments = compose.override(task_id=f"compose_{n}")(n)
        generate = FalInferenceOperator(
            task_id=f"generate_{n}",
            app_id="{{ params.app_id }}",
            arguments=arguments,
            deferrable=True,
            timeout=600,
        )
        review = HITLOperator(
            task_id=f"review_{n}",
            subject=f"Review the generated images (round {n} of {MAX_ROUNDS})",
            body=REVIEW_BODY.format(
                n=n, max_rounds=MAX_ROUNDS, approve=APPROVE, reject=REJECT, regenerate=REGENERATE
            ),
            options=[APPROVE, REJECT, REGENERATE],
            params={"feedback": Param("", type="string", description="What to change (used on Reject)")},
        )
        if previous_review is not None:
            previous_review >> arguments
        arguments >> generate >> review
        reviews.append(review)
        previous_review = review
    reviews >> publish()
