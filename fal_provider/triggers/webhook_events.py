"""Event-driven scheduling on fal callbacks (``AssetWatcher``), for requests submitted outside Airflow.

Submit to fal with ``fal_webhook=build_webhook_url(base, channel="my-channel")``; a DAG scheduled on
an asset watched by ``FalWebhookEventTrigger(channel="my-channel")`` then runs once per verified
callback, with the callback's small record in the asset event's ``extra["payload"]``.

The receiver fires the asset event itself, with ``Trigger.submit_event`` on this trigger's row, in
the same transaction that records the callback (so a duplicate delivery never fires twice and a
failed write makes fal retry). That is why ``run()`` has nothing to poll: the trigger exists to
link the channel to the asset in the metadata database, and waiting costs one idle coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from fal_provider.webhooks.urls import validate_channel
from fal_provider.webhooks.wake import EVENT_TRIGGER_CLASSPATH

_IDLE_SECONDS = 3600.0


class FalWebhookEventTrigger(BaseEventTrigger):
    """Marks an asset as fed by fal callbacks sent to ``…/fal/webhook?channel=<channel>``.

    :param channel: name in the callback URL; letters, digits and ``_ . : -``.
    """

    def __init__(self, *, channel: str) -> None:
        super().__init__()
        self.channel = validate_channel(channel)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return EVENT_TRIGGER_CLASSPATH, {"channel": self.channel}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Idle: events for this trigger are submitted by the webhook receiver on the API server."""
        self.log.info("Waiting for fal callbacks on channel %r (delivered by the API server)", self.channel)
        while True:
            await asyncio.sleep(_IDLE_SECONDS)
        yield  # pragma: no cover - makes this an async generator, as the triggerer expects
