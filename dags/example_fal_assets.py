"""Generated images as an Airflow asset: one DAG writes them, another is scheduled on them.

``fal_generate_images`` writes each result and its images to ``output_path`` and declares the
asset ``fal_generated_images`` as its outlet. When the task succeeds Airflow records an asset
event whose ``extra`` lists the files written (``files``), the fal request ids and fal's media
URLs, and every DAG scheduled on the asset runs: here ``fal_on_new_images``, which reads the new
files from the triggering event.

Outputs go to the ``output_dir`` param, else ``$FAL_EXAMPLE_OUTPUT_DIR``, else ``output/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

GENERATED_IMAGES = Asset(name="fal_generated_images", uri="fal://generated-images")

DEFAULT_OUTPUT_DIR = os.environ.get(
    "FAL_EXAMPLE_OUTPUT_DIR", str(Path(__file__).resolve().parent.parent / "output")
)

with DAG(
    dag_id="fal_generate_images",
    schedule=None,
    catchup=False,
    tags=["fal", "example"],
    params={
        "prompt": Param("a greenhouse full of orchids", type="string"),
        "output_dir": Param(DEFAULT_OUTPUT_DIR, type="string"),
    },
    doc_md=__doc__,
):

    @task.fal(
        app_id="fal-ai/flux/schnell",
        output_path="{{ params.output_dir }}/assets/",
        download_media=True,
        deferrable=True,
        timeout=600,
        outlets=[GENERATED_IMAGES],
    )
    def generate(**context: Any) -> dict[str, Any]:
        return {"prompt": context["params"]["prompt"], "seed": 11}

    generate()


with DAG(
    dag_id="fal_on_new_images",
    schedule=[GENERATED_IMAGES],
    catchup=False,
    tags=["fal", "example"],
    doc_md=__doc__,
):

    @task
    def list_new_files(**context: Any) -> list[str]:
        files: list[str] = []
        for events in context["triggering_asset_events"].values():
            for event in events:
                files.extend(event.extra.get("files", []))
        print(f"New files from fal: {files}")
        return files

    list_new_files()
