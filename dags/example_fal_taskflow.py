"""TaskFlow: ``@task.fal`` functions return a model's arguments; the task is the inference.

``render`` builds the text-to-image arguments from the run's params and is mapped over the
prompts (one deferred fal request per prompt); ``upscale`` takes each image URL from ``render``'s
result. Each decorated task is a ``FalInferenceOperator``: ``select``, ``deferrable``,
``timeout`` and every other operator parameter go in the decorator; a retry reattaches to the
request the first try paid for.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

PROMPTS = ["a red fox in snow", "a lighthouse at dawn"]

with DAG(
    dag_id="example_fal_taskflow",
    schedule=None,
    catchup=False,
    tags=["fal", "example"],
    params={"prompts": Param(PROMPTS, type="array"), "scale": Param(2, type="integer")},
    doc_md=__doc__,
) as dag:

    @task
    def prompts(**context: Any) -> list[str]:
        return list(context["params"]["prompts"])

    @task.fal(app_id="fal-ai/flux/schnell", select="images.0.url", deferrable=True, timeout=600)
    def render(prompt: str) -> dict[str, Any]:
        return {"prompt": prompt, "image_size": "square", "seed": 1}

    @task.fal(app_id="fal-ai/esrgan", select="image.url", deferrable=True, timeout=600)
    def upscale(image_url: str, **context: Any) -> dict[str, Any]:
        return {"image_url": image_url, "scale": context["params"]["scale"]}

    @task
    def collect(urls: list[str]) -> dict[str, Any]:
        return {"count": len(list(urls)), "images": list(urls)}

    collect(upscale.expand(image_url=render.expand(prompt=prompts())))
