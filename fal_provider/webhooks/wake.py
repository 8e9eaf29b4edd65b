"""Turning a verified callback into an Airflow event, from inside the API server.

``Trigger.submit_event`` is the same call the triggerer makes when a trigger yields; it only
touches the database (``handle_event_submit`` is documented to run in the API processes too). So
the receiver can resume a deferred task, or fire an asset event for an ``AssetWatcher``, itself:
waiting costs nothing while the callback is on time, and no triggerer has to notice first.

The callback URL's query is not signed. A task is therefore only resumed when its current trigger
is one of this provider's and waits for exactly the request id the signature vouches for; a
replayed body with a different query cannot wake anything else.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fal_provider.waiting import webhook_event
from fal_provider.webhooks.store import WebhookRecord
from fal_provider.webhooks.urls import TaskIdentity

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

PROVIDER_CLASSPATH_PREFIX = "fal_provider."
EVENT_TRIGGER_CLASSPATH = "fal_provider.triggers.webhook_events.FalWebhookEventTrigger"
#: Rows stored before the trigger moved to ``triggers/`` keep the old classpath until their DAG is
#: parsed again; they still watch their channel.
EVENT_TRIGGER_CLASSPATHS = (EVENT_TRIGGER_CLASSPATH, "fal_provider.webhooks.triggers.FalWebhookEventTrigger")


class WakeOutcome(str, enum.Enum):
    RESUMED = "resumed"
    TASK_NOT_FOUND = "task not found"
    NOT_DEFERRED = "task not deferred"
    OTHER_REQUEST = "task waits for another request"


def task_event(record: WebhookRecord, request: Mapping[str, Any] | None) -> dict[str, Any]:
    """The event the task resumes with (see :func:`fal_provider.waiting.webhook_event`); the result
    itself is fetched by the worker in ``execute_complete``."""
    return webhook_event(
        succeeded=record.succeeded, error=record.error, request=request, request_id=record.request_id
    )


def waits_for_request(kwargs: Any, request_id: str, depth: int = 3) -> bool:
    """Whether trigger kwargs name this request id (top level or inside a request reference)."""
    if depth < 0 or not isinstance(kwargs, Mapping):
        return False
    if kwargs.get("request_id") == request_id:
        return True
    return any(waits_for_request(value, request_id, depth - 1) for value in kwargs.values())


def _request_ref(kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    request = kwargs.get("request")
    return request if isinstance(request, Mapping) else None


def _waiting_trigger(identity: TaskIdentity, request_id: str, *, session: Session) -> tuple[WakeOutcome, Any]:
    """The provider trigger the named task is deferred on for this request (row-locked), or why not."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.sqlalchemy import with_row_locks
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    query = select(TaskInstance).where(
        TaskInstance.dag_id == identity.dag_id,
        TaskInstance.run_id == identity.run_id,
        TaskInstance.task_id == identity.task_id,
        TaskInstance.map_index == identity.map_index,
    )
    ti = session.scalar(with_row_locks(query, session, of=TaskInstance))
    if ti is None:
        return WakeOutcome.TASK_NOT_FOUND, None
    if ti.state != TaskInstanceState.DEFERRED or ti.trigger_id is None:
        return WakeOutcome.NOT_DEFERRED, None
    trigger = session.get(Trigger, ti.trigger_id)
    if trigger is None or not str(trigger.classpath).startswith(PROVIDER_CLASSPATH_PREFIX):
        return WakeOutcome.OTHER_REQUEST, None
    if not waits_for_request(trigger.kwargs, request_id):
        return WakeOutcome.OTHER_REQUEST, None
    return WakeOutcome.RESUMED, trigger


def is_awaited(identity: TaskIdentity, request_id: str, *, session: Session) -> WakeOutcome:
    """``RESUMED`` when the named task is deferred on a provider trigger waiting for this request.

    Without a user-id allow-list this is what makes a task callback "for us": fal request ids are
    unguessable and fal only signs a callback for the account that submitted the request, so a
    deferred trigger naming the signed request id proves the callback concerns our request.
    """
    return _waiting_trigger(identity, request_id, session=session)[0]


def wake_task(identity: TaskIdentity, record: WebhookRecord, *, session: Session) -> WakeOutcome:
    """Resume the task named in the URL if, and only if, it is deferred waiting for this request."""
    from airflow.models.trigger import Trigger
    from airflow.triggers.base import TriggerEvent

    outcome, trigger = _waiting_trigger(identity, record.request_id, session=session)
    if trigger is None:
        return outcome
    event = TriggerEvent(task_event(record, _request_ref(trigger.kwargs)))
    Trigger.submit_event(trigger.id, event, session=session)
    return WakeOutcome.RESUMED


def channel_event(record: WebhookRecord) -> dict[str, Any]:
    """The asset event payload for a channel callback (lands in the asset event's ``extra``)."""
    return {
        "request_id": record.request_id,
        "status": record.status,
        "channel": record.channel,
        "error": record.error,
        "payload_error": record.payload_error,
        "payload": record.payload,
        "payload_omitted": record.payload_omitted,
        "received_at": record.received_at,
    }


def fire_channel(record: WebhookRecord, *, session: Session) -> int:
    """Fire one asset event per ``FalWebhookEventTrigger`` watching this channel; returns how many."""
    from airflow.models.trigger import Trigger
    from airflow.triggers.base import TriggerEvent
    from sqlalchemy import select

    # Airflow 3.1 links triggers to assets directly; later releases through asset watchers.
    watched = Trigger.asset_watchers if hasattr(Trigger, "asset_watchers") else Trigger.assets
    watchers = session.scalars(
        select(Trigger).where(Trigger.classpath.in_(EVENT_TRIGGER_CLASSPATHS), watched.any())
    ).all()
    fired = 0
    for trigger in watchers:
        try:
            kwargs = trigger.kwargs
        except Exception:
            log.warning("Skipping fal event trigger %s: its kwargs cannot be decrypted", trigger.id)
            continue
        if kwargs.get("channel") != record.channel:
            continue
        Trigger.submit_event(trigger.id, TriggerEvent(channel_event(record)), session=session)
        fired += 1
    return fired
