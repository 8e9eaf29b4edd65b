"""The DAG the task-view browser tests look at: one task still waiting, one finished with an image."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from fal_provider.operators.fal import FalInferenceOperator

# One retry, as in production: on a loaded machine Airflow can fail a resumed task whose process
# exited before its success was recorded; the retry reattaches to the same (paid) request.
RETRY = {"retries": 1, "retry_delay": timedelta(seconds=2)}

with DAG("fal_view", schedule=None, start_date=datetime(2025, 1, 1), catchup=False, default_args=RETRY):
    # Deferred for minutes, writing a fal log line every second: the view shows it live.
    FalInferenceOperator(
        task_id="waiting",
        app_id="emulator/echo",
        arguments={"duration_s": 600, "log_lines": 600, "note": "<b>not bold</b>"},
        deferrable=True,
    )
    FalInferenceOperator(
        task_id="image",
        app_id="fal-ai/fast-lcm-diffusion",
        arguments={"prompt": "a red fox in snow", "seed": 3, "num_images": 2},
        deferrable=True,
    )
