"""Submit, wait and fetch as separate tasks.

Useful when the wait should be its own task (a sensor that frees its worker slot while fal
queues), or when another system waits on the same request. ``cancel_on_failure`` cancels the
request if anything after the submit fails, so nothing is left running (and billed) at fal.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import DAG, Param

from fal_provider.operators.fal import FalCancelOperator, FalResultOperator, FalSubmitOperator
from fal_provider.sensors.fal import FalRequestSensor

DEFAULT_OUTPUT_DIR = os.environ.get(
    "FAL_EXAMPLE_OUTPUT_DIR", str(Path(__file__).resolve().parent.parent / "output")
)

with DAG(
    dag_id="fal_submit_sensor_result",
    schedule=None,
    catchup=False,
    tags=["fal", "example"],
    params={
        "prompt": Param("an isometric city block at night, neon", type="string"),
        "output_dir": Param(DEFAULT_OUTPUT_DIR, type="string"),
    },
    doc_md=__doc__,
) as dag:
    submit = FalSubmitOperator(
        task_id="submit",
        app_id="fal-ai/flux/dev",
        arguments={"prompt": "{{ params.prompt }}", "image_size": "square_hd", "num_inference_steps": 28},
        priority="normal",
    )

    wait = FalRequestSensor(
        task_id="wait",
        request=submit.output,
        deferrable=True,
        poke_interval=1,
        timeout=600,
        log_fal_logs=True,
    )

    result = FalResultOperator(
        task_id="result",
        request=wait.output,
        output_path="file://{{ params.output_dir }}/fal_submit_sensor_result/{{ run_id | replace(':', '_') | replace('+', '_') }}/",
        download_media=True,
        select="images.0.url",
    )

    cancel_on_failure = FalCancelOperator(
        task_id="cancel_on_failure", request=submit.output, trigger_rule="one_failed"
    )

    # The cleanup hangs off the waiting tasks, not after them, so a failure still fails the run
    # (``result`` stays a leaf) while the fal request is cancelled.
    submit >> wait >> result
    [wait, result] >> cancel_on_failure
