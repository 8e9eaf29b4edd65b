"""What ``FalRequestTrigger``'s ``webhook`` mode awaits, and what its ``on_kill`` consults.

In the normal case the receiver resumes the task itself (see ``wake.py``) and this coroutine is
simply cancelled by the triggerer. It covers the other cases:

- the callback arrived before the task deferred (or while no triggerer ran): the record is read
  once on start, and the trigger yields at once;
- the callback never arrives (dropped, JWKS down, receiver unreachable): every
  ``backstop_interval`` seconds the record is read again and then fal's status is polled once;
- the deadline passes: ``timeout``.

Reads go through the Task SDK (``Variable.get`` under asgiref's ``sync_to_async``), the way
triggers must reach the metadata database in Airflow 3: the triggerer's supervisor channel answers
on the triggerer's own event loop, which ``sync_to_async`` routes back to and a bare thread does
not. The receiver writes through the ORM.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from fal_provider.waiting import DEFAULT_BACKSTOP_INTERVAL
from fal_provider.webhooks.store import WebhookRecord, record_key

T = TypeVar("T")
#: Spreads the backstop polls of many requests deferred together (a fan-out) over time.
BACKSTOP_JITTER = 0.1

Reader = Callable[[str], Awaitable[str | None]]


async def _read_variable(key: str) -> str | None:
    from airflow.sdk import Variable
    from asgiref.sync import sync_to_async

    value = await sync_to_async(Variable.get)(key, default=None)
    return None if value is None else str(value)


async def _delete_variable(key: str) -> None:
    from airflow.sdk import Variable
    from asgiref.sync import sync_to_async

    await sync_to_async(Variable.delete)(key)


async def aget_webhook_record(request_id: str, *, reader: Reader | None = None) -> WebhookRecord | None:
    """The verified callback recorded for this request, if any (one Execution API round trip)."""
    text = await (reader or _read_variable)(record_key(request_id))
    if text is None:
        return None
    try:
        return WebhookRecord.from_json(text)
    except (ValueError, TypeError):
        return None


async def adelete_webhook_record(request_id: str) -> None:
    """Optional early cleanup once a task has consumed its record; the receiver's sweep does the rest."""
    await _delete_variable(record_key(request_id))


@dataclass(frozen=True)
class WaitResult(Generic[T]):
    """How the wait ended: the callback's record, a terminal status from the backstop, or the deadline."""

    source: Literal["webhook", "backstop", "timeout"]
    record: WebhookRecord | None = None
    status: T | None = None


def _next_sleep(interval: float, end_time: float | None, now: float, jitter: float) -> float:
    delay = interval * (1 + random.uniform(-jitter, jitter))
    if end_time is not None:
        delay = min(delay, max(end_time - now, 0.0))
    return delay


async def wait_for_webhook_or_backstop(
    request_id: str,
    check_status: Callable[[], Awaitable[T | None]],
    *,
    backstop_interval: float = DEFAULT_BACKSTOP_INTERVAL,
    end_time: float | None = None,
    reader: Reader | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    jitter: float = BACKSTOP_JITTER,
) -> WaitResult[T]:
    """Wait for the recorded callback, polling fal only every ``backstop_interval`` seconds.

    :param check_status: the trigger's single status poll; returns a terminal status or ``None``
        (still running, or a transient error the trigger chose to tolerate). It may raise to end
        the wait with the trigger's own error handling.
    :param end_time: absolute epoch deadline, so a triggerer restart does not reset it.
    """
    if backstop_interval <= 0:
        raise ValueError("backstop_interval must be a positive number of seconds")
    if (record := await aget_webhook_record(request_id, reader=reader)) is not None:
        return WaitResult("webhook", record=record)
    while True:
        now = clock()
        if end_time is not None and now >= end_time:
            return WaitResult("timeout")
        await sleep(_next_sleep(backstop_interval, end_time, now, jitter))
        if (record := await aget_webhook_record(request_id, reader=reader)) is not None:
            return WaitResult("webhook", record=record)
        if end_time is not None and clock() >= end_time:
            return WaitResult("timeout")
        status = await check_status()
        if status is not None:
            return WaitResult("backstop", status=status)


async def should_cancel_on_kill(request_id: str, *, reader: Reader | None = None) -> bool:
    """False when a callback was recorded: the request already finished, so cancelling is pointless.

    The triggerer calls ``on_kill`` on a trigger whose task the receiver resumed (it sees the trigger
    as no longer wanted, the same signal as a user's mark-failed). Without this check every
    webhook-resumed task would cost one needless cancel call to fal. Errors answer True: when in
    doubt, cancelling a finished request is harmless (fal answers ``ALREADY_COMPLETED``).
    """
    try:
        return await aget_webhook_record(request_id, reader=reader) is None
    except Exception:
        return True
