"""Fan out: one prompt list mapped over ``FalInferenceOperator``, collected downstream.

Each mapped task is its own fal request (deferred, so hundreds of them wait in the triggerer
without holding worker slots); ``select`` keeps only the image URL in XCom.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from fal_provider.operators.fal import FalInferenceOperator

PROMPTS = ["a red fox in snow", "a lighthouse at dawn", "a bowl of ramen, studio light"]

with DAG(
    dag_id="fal_fan_out",
    schedule=None,
    catchup=False,
    tags=["fal", "example"],
    params={"prompts": Param(PROMPTS, type="array")},
    doc_md=__doc__,
) as dag:

    @task
    def build_arguments(**context: Any) -> list[dict[str, Any]]:
        return [
            {"prompt": prompt, "image_size": "square", "seed": 1} for prompt in context["params"]["prompts"]
        ]

    images = FalInferenceOperator.partial(
        task_id="generate",
        app_id="fal-ai/flux/schnell",
        select="images.0.url",
        deferrable=True,
        timeout=600,
        max_active_tis_per_dagrun=16,
    ).expand(arguments=build_arguments())

    @task
    def collect(urls: list[str], **context: Any) -> dict[str, Any]:
        prompts = context["params"]["prompts"]
        return {"count": len(list(urls)), "images": dict(zip(prompts, urls, strict=True))}

    collect(images.output)
