"""Text-to-image -> upscale -> caption -> a local report, each step fed by the previous one.

Runs unchanged against the local fal emulator or fal.ai: only the ``fal_default`` connection
decides (see the README). Outputs go to the ``output_dir`` param, else ``$FAL_EXAMPLE_OUTPUT_DIR``,
else ``output/`` in the repository.

Two ways of passing one model's output to the next are shown: Jinja templating
(``text_to_image`` -> ``upscale``) and a TaskFlow step returning the next argument dict
(``upscale`` -> ``caption``).

Every fal task pushes what its request cost (XCom ``fal_cost``); ``cost`` adds them up and returns
the run's total, also after a failure (``trigger_rule="all_done"``).

With ``$FAL_EXAMPLE_CACHE_PATH`` set (a folder or an object-storage URI) every model step runs with
the result cache (``cache=True``): a rerun with the same prompt pays for nothing, and the steps pass
each other the cached copies of the images (their URLs point into the cache).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from fal_provider.operators.costing import FalCostReportOperator
from fal_provider.operators.fal import FalInferenceOperator

DEFAULT_OUTPUT_DIR = os.environ.get(
    "FAL_EXAMPLE_OUTPUT_DIR", str(Path(__file__).resolve().parent.parent / "output")
)
CACHE_PATH = os.environ.get("FAL_EXAMPLE_CACHE_PATH")
CACHE: dict[str, Any] = {"cache": True, "cache_path": CACHE_PATH} if CACHE_PATH else {}

with DAG(
    dag_id="fal_pipeline",
    schedule=None,
    catchup=False,
    tags=["fal", "example"],
    params={
        "prompt": Param("a lighthouse on a cliff at dusk, watercolor", type="string"),
        "output_dir": Param(DEFAULT_OUTPUT_DIR, type="string"),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    doc_md=__doc__,
) as dag:
    text_to_image = FalInferenceOperator(
        task_id="text_to_image",
        app_id="fal-ai/flux/schnell",
        arguments={
            "prompt": "{{ params.prompt }}",
            "image_size": "landscape_4_3",
            "num_images": 1,
            "seed": 7,
        },
        deferrable=True,
        timeout=600,
        log_fal_logs=True,
        **CACHE,
    )

    upscale = FalInferenceOperator(
        task_id="upscale",
        app_id="fal-ai/esrgan",
        arguments={
            "image_url": "{{ ti.xcom_pull(task_ids='text_to_image')['images'][0]['url'] }}",
            "scale": 2,
        },
        select="image",  # only the file object goes to XCom
        deferrable=True,
        wait_mode="stream",
        timeout=600,
        **CACHE,
    )

    @task
    def caption_arguments(image: dict[str, Any]) -> dict[str, Any]:
        return {"image_url": image["url"]}

    caption = FalInferenceOperator(
        task_id="caption",
        app_id="fal-ai/florence-2-large/more-detailed-caption",
        arguments=caption_arguments(upscale.output),
        select="results",
        deferrable=True,
        timeout=600,
        **CACHE,
    )

    @task
    def write_report(
        generated: dict[str, Any], upscaled: dict[str, Any], caption_text: str, **context: Any
    ) -> dict[str, Any]:
        """Copy the images (fal media URLs expire) and write a small report next to them."""
        import json
        import re

        import httpx
        from airflow.sdk import ObjectStoragePath

        def read(url: str) -> bytes:
            if not url.startswith(("http://", "https://")):  # a copy in the result cache
                return ObjectStoragePath(url).read_bytes()
            response = httpx.get(url, timeout=60, follow_redirects=True)
            response.raise_for_status()
            return response.content

        run_id = re.sub(r"[^A-Za-z0-9._-]+", "_", context["run_id"])
        folder = Path(context["params"]["output_dir"]).expanduser() / "fal_pipeline" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, url in (
            ("generated.png", generated["images"][0]["url"]),
            ("upscaled.png", upscaled["url"]),
        ):
            (folder / name).write_bytes(read(url))
            files[name] = str(folder / name)
        report = {
            "prompt": generated.get("prompt"),
            "seed": generated.get("seed"),
            "generated": {k: generated["images"][0].get(k) for k in ("url", "width", "height")},
            "upscaled": {k: upscaled.get(k) for k in ("url", "width", "height")},
            "caption": caption_text,
            "files": files,
        }
        (folder / "report.json").write_text(json.dumps(report, indent=2))
        (folder / "report.md").write_text(
            f"# fal pipeline report\n\nPrompt: {report['prompt']}\n\nCaption: {caption_text}\n\n"
            "![generated](generated.png)\n![upscaled](upscaled.png)\n"
        )
        return {"folder": str(folder), "report": str(folder / "report.json"), **files}

    # The Jinja reference above does not create a dependency by itself.
    text_to_image >> upscale
    report = write_report(text_to_image.output, upscale.output, caption.output)
    report >> FalCostReportOperator(task_id="cost", trigger_rule="all_done")
