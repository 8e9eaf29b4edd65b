"""A batch of inputs pushed through one fal realtime session instead of one request each.

``FalRealtimeOperator`` fetches a short-lived token, opens one WebSocket to the app's
``/realtime`` endpoint, sends every input (msgpack) and returns one output per input, in input
order. If the session drops mid-batch it reconnects with a fresh token and resends only the
inputs that have no output yet.

The app is a DAG param. The default ``fal-ai/fast-lcm-diffusion`` is fal's realtime text-to-image
model (the emulator has a deterministic stand-in under the same id), so pointing the ``fal_default``
connection at fal.ai is the only change needed. Each output is that model's usual result:
``images`` (CDN URLs; no ``sync_mode``, so XComs stay small JSON), ``seed``, ``prompt``, ``timings``.
``emulator/realtime`` (the emulator's echo) still works as the app: its outputs are the inputs.
``realtime_with_hook`` shows the same session from TaskFlow code through ``FalHook.realtime()``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from fal_provider.operators.realtime import FalRealtimeOperator

with DAG(
    dag_id="example_fal_realtime",
    schedule=None,
    catchup=False,
    tags=["fal", "example", "realtime"],
    params={
        "app_id": Param("fal-ai/fast-lcm-diffusion", type="string"),
        "frames": Param(20, type="integer", minimum=1, maximum=10000),
    },
    doc_md=__doc__,
) as dag:

    @task
    def build_inputs(**context: Any) -> list[dict[str, Any]]:
        return [
            {"prompt": f"frame {i}", "seed": i, "image_size": "square"}
            for i in range(context["params"]["frames"])
        ]

    inputs = build_inputs()

    outputs = FalRealtimeOperator(
        task_id="realtime_batch",
        app_id="{{ params.app_id }}",
        inputs=inputs,
        max_in_flight=4,
        message_timeout=60,
        max_reconnects=3,
        log_interval=2.0,
    )

    @task
    def check_order(sent: list[dict[str, Any]], received: list[dict[str, Any]]) -> dict[str, Any]:
        """Outputs line up with inputs by position: each output names the seed of its input."""
        return {
            "count": len(received),
            "in_order": [o.get("seed") for o in received] == [i["seed"] for i in sent],
            "first": received[0] if received else None,
        }

    check_order(inputs, outputs.output)

    @task
    def realtime_with_hook(**context: Any) -> list[Any]:
        """TaskFlow: drive a session yourself; one message at a time, each answer in turn."""
        from fal_provider.hooks.fal import FalHook

        hook = FalHook()
        answers = []
        try:
            with hook.realtime(context["params"]["app_id"]) as session:
                for seed in range(3):
                    session.send({"prompt": "hello", "seed": seed, "image_size": "square"})
                    answers.append(session.recv(timeout=60))
        finally:
            hook.close()
        return answers

    realtime_with_hook()
