"""Event-driven: a DAG that runs once per verified fal callback, for requests submitted anywhere.

``fal_webhook_submit_batch`` stands in for "some other system": it only submits requests with
``fal_webhook`` pointing at this Airflow's receiver under the channel ``example-batch``, and does
not wait. ``fal_webhook_on_callback`` is scheduled on an asset watched by
``FalWebhookEventTrigger(channel="example-batch")``: the API server that receives a callback
verifies it and fires the asset event, so nothing polls fal while the requests run.

Needs the fal connection's ``webhook_base_url`` (the API server's public URL), ``webhook_secret``
(keys the channel token) and ``webhook_allowed_user_ids`` (your fal user id) extras. Runs
unchanged against the emulator (see ``docker/compose.yaml``) or fal.ai.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, Param, task

from fal_provider.webhooks.triggers import FalWebhookEventTrigger

CHANNEL = "example-batch"
APP_ID = "fal-ai/flux/schnell"

fal_callbacks = Asset(
    "fal_webhook_example_batch",
    watchers=[AssetWatcher(name="fal_example_batch", trigger=FalWebhookEventTrigger(channel=CHANNEL))],
)

with DAG(
    dag_id="fal_webhook_submit_batch",
    schedule=None,
    catchup=False,
    tags=["fal", "example", "webhook"],
    params={"prompts": Param(["a paper boat", "a glass city"], type="array")},
    doc_md=__doc__,
):

    @task
    def submit_without_waiting(**context: Any) -> list[str]:
        from fal_provider.hooks.fal import FalHook
        from fal_provider.webhooks.settings import channel_webhook_url

        hook = FalHook()
        # carries the channel's token, made with the connection's webhook_secret
        callback = channel_webhook_url(CHANNEL, conn_id=hook.fal_conn_id)
        refs = [
            hook.submit(APP_ID, {"prompt": prompt, "seed": 1}, webhook_url=callback)
            for prompt in context["params"]["prompts"]
        ]
        return [ref.request_id for ref in refs]

    submit_without_waiting()


with DAG(
    dag_id="fal_webhook_on_callback",
    schedule=[fal_callbacks],
    catchup=False,
    tags=["fal", "example", "webhook"],
    doc_md=__doc__,
):

    @task
    def handle_callbacks(**context: Any) -> list[dict[str, Any]]:
        """One run may carry several callbacks (asset events queued while the DAG was busy)."""
        handled = []
        for events in context["triggering_asset_events"].values():
            for event in events:
                record = event.extra.get("payload", {})
                output = record.get("payload")
                if output is None and record.get("status") == "OK":
                    from fal_provider.hooks.fal import FalHook

                    hook = FalHook()
                    output = hook.get_result(hook.request_ref(APP_ID, record["request_id"]))
                handled.append({"request_id": record.get("request_id"), "status": record.get("status")})
                print(f"fal request {record.get('request_id')}: {record.get('status')} -> {output}")
        return handled

    handle_callbacks()
