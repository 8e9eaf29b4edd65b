"""Nightly bulk inference: every prompt of a JSONL file through one fal model, in one task.

``@task.fal_batch`` returns the JSONL file to read (streamed, never loaded whole); the batch keeps
at most ``max_in_flight`` requests running, writes each result to ``results.jsonl`` under the
output folder as soon as it is ready, and returns only a manifest. A retry (or a killed worker)
resumes from the batch's journal without paying twice; ``min_success_ratio`` lets a few bad prompts
fail without failing the night. The downstream task streams the results from the manifest.

Runs unchanged against the fal emulator or fal.ai; set ``FAL_EXAMPLE_OUTPUT_DIR`` to a local folder
(or point ``output_path`` at ``s3://...``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, ObjectStoragePath, task

from fal_provider.operators.batch import iter_batch_results

PROMPTS = Path(__file__).parent / "data" / "prompts.jsonl"
OUTPUT = "file://" + os.environ.get("FAL_EXAMPLE_OUTPUT_DIR", "/tmp/fal-example-output") + "/batches"

with DAG(
    dag_id="example_fal_batch",
    schedule="@daily",
    catchup=False,
    tags=["fal", "example", "batch"],
    doc_md=__doc__,
) as dag:

    @task.fal_batch(
        app_id="fal-ai/flux/schnell",
        output_path=OUTPUT,
        max_in_flight=8,
        min_success_ratio=0.9,
        options={"priority": "low"},  # a nightly job can wait behind interactive traffic
        progress_interval=10,
    )
    def nightly_prompts() -> ObjectStoragePath:
        return ObjectStoragePath("file://" + str(PROMPTS))

    @task
    def collect(manifest: dict[str, Any]) -> dict[str, Any]:
        urls = {}
        for line in iter_batch_results(manifest):
            if line["status"] == "success":
                urls[line["index"]] = line["result"]["images"][0]["url"]
        print(f"{len(urls)} of {manifest['total']} prompts produced an image")
        return {"images": len(urls), "total": manifest["total"], "first": urls.get(0)}

    collect(nightly_prompts())
