"""The former home of :class:`~fal_provider.triggers.webhook_events.FalWebhookEventTrigger`.

DAGs that import it from here keep working, and so do trigger rows an older release stored with
this module's classpath: the triggerer imports the classpath it finds in the database.
"""

from __future__ import annotations

from fal_provider.triggers.webhook_events import FalWebhookEventTrigger

__all__ = ["FalWebhookEventTrigger"]
