"""The trigger that waits for a queued fal request without holding a worker slot.

It only reads: status GETs (or fal's status SSE stream) and, on ``on_kill``, the cancel call. The
submit POST happened on the worker, so a triggerer restart, which rebuilds this trigger from
``serialize()`` and runs it again from the start, never sends a second paid request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.models import CompletedStatus, FalRequestRef
from fal_provider.waiting import (
    ErrorTolerance,
    PollPolicy,
    StreamFollower,
    WaitPolicy,
    backstop_event,
    error_event,
    poll_load,
    sleep_on_tick,
    stream_slots,
    timeout_event,
)

CLASSPATH = "fal_provider.triggers.fal.FalRequestTrigger"

#: Bound on the Airflow < 3.3 cancel-on-kill path (state lookup plus cancel call), the same budget
#: Airflow 3.3 gives ``on_kill`` by default (``[triggerer] on_kill_timeout``): a slow fal or Execution
#: API must not keep a cancelled trigger alive.
LEGACY_KILL_TIMEOUT = 30.0


class FalRequestTrigger(BaseTrigger):
    """Wait for a fal request to finish, then yield one small event.

    :param request: the request reference (``FalRequestRef.to_xcom()``); identifiers and URLs only.
    :param fal_conn_id: connection whose key the hook uses; the key itself is never serialized.
    :param cancel_on_kill: cancel the fal request when a user marks the task failed/success or
        clears it. Airflow >= 3.3 calls ``on_kill`` for exactly those actions. Older triggerers never
        call it and cancel the trigger's task alike for a user action, a restart and a move to another
        triggerer, so there ``run()`` catches the cancellation and asks the Task SDK for the task
        instance's state: still ``deferred`` means a restart/redistribution (the trigger resumes
        elsewhere; nothing is cancelled), any other state means the user moved the task on and the
        request is cancelled. An unknown state (lookup failed, no task instance) cancels nothing. The
        cancellation is always re-raised; both paths share ``_cancel_request`` (once, never raises).
    :param policy: the :class:`~fal_provider.waiting.WaitPolicy` fields as keyword arguments
        (``wait_mode``, ``poll_interval``, ``max_poll_interval``, ``max_consecutive_errors``,
        ``log_fal_logs``, ``backstop_interval``, ``end_time``): flat, as every version has stored
        them, so a trigger serialized before an upgrade still loads after it.
    """

    def __init__(
        self,
        *,
        request: dict[str, Any],
        fal_conn_id: str = "fal_default",
        cancel_on_kill: bool = True,
        **policy: Any,
    ) -> None:
        super().__init__()
        self.request = FalRequestRef.coerce(request).to_xcom()
        self.fal_conn_id = fal_conn_id
        self.cancel_on_kill = cancel_on_kill
        self.policy = WaitPolicy(**policy)
        self._killed = False

    @classmethod
    def for_request(
        cls, ref: FalRequestRef, policy: WaitPolicy, *, fal_conn_id: str, cancel_on_kill: bool
    ) -> FalRequestTrigger:
        """The trigger every operator and the sensor defer on."""
        return cls(
            request=ref.to_xcom(),
            fal_conn_id=fal_conn_id,
            cancel_on_kill=cancel_on_kill,
            **policy.as_kwargs(),
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The same flat keyword arguments as ever, so triggers stored by any version still load."""
        return (
            CLASSPATH,
            {
                "request": self.request,
                "fal_conn_id": self.fal_conn_id,
                "cancel_on_kill": self.cancel_on_kill,
                **self.policy.as_kwargs(),
            },
        )

    @property
    def ref(self) -> FalRequestRef:
        return FalRequestRef.coerce(self.request)

    def _hook(self) -> Any:
        from fal_provider.hooks.fal import FalHook

        return FalHook(self.fal_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        ref = self.ref
        hook = self._hook()
        remaining = self.policy.remaining()
        if remaining is not None and remaining <= 0:
            yield TriggerEvent(timeout_event(ref, self.policy.end_time))
            return
        try:
            # No deadline: await the wait itself (wait_for would add a coroutine per waiter for nothing).
            wait = self._wait(hook, ref)
            event = await (wait if remaining is None else asyncio.wait_for(wait, timeout=remaining))
        except (asyncio.TimeoutError, TimeoutError):
            event = timeout_event(ref, self.policy.end_time)
        except asyncio.CancelledError:
            if not AIRFLOW_V_3_3_PLUS:
                from fal_provider.triggers.kill import finish_despite_cancels

                await finish_despite_cancels(self._cancel_if_user_killed())
            raise
        yield TriggerEvent(event)

    async def _wait(self, hook: Any, ref: FalRequestRef) -> dict[str, Any]:
        """Dispatch to one small coroutine per mode."""
        if self.policy.wait_mode == "webhook":
            return await self._wait_webhook(hook, ref)
        if self.policy.wait_mode == "stream":
            event = await self._wait_stream(hook, ref)
            if event is not None:
                return event
        return await self._wait_poll(hook, ref)

    async def _wait_poll(self, hook: Any, ref: FalRequestRef) -> dict[str, Any]:
        load = poll_load()
        policy = PollPolicy(ref, self.policy, self.log, load=load)
        load.pollers += 1
        try:
            while True:
                try:
                    status = await hook.aget_status(ref, logs=self.policy.log_fal_logs)
                except Exception as err:
                    step = policy.failed(err)
                else:
                    step = policy.observed(status)
                if isinstance(step, dict):
                    return step
                await sleep_on_tick(step)
        finally:
            load.pollers -= 1

    async def _wait_stream(self, hook: Any, ref: FalRequestRef) -> dict[str, Any] | None:
        """Follow fal's status SSE; ``None`` means polling takes over (the stream broke, or this
        loop already holds its maximum of open streams)."""
        slots = stream_slots()
        if not slots.take():
            self.log.debug(
                "fal request %s: %d status streams open on this loop; polling", ref.request_id, slots.open
            )
            return None
        try:
            delay = slots.open_delay()
            if delay:
                await asyncio.sleep(delay)
            return await self._follow_stream(hook, ref)
        finally:
            slots.give_back()

    async def _follow_stream(self, hook: Any, ref: FalRequestRef) -> dict[str, Any] | None:
        follower = StreamFollower(ref, log=self.log, log_fal_logs=self.policy.log_fal_logs)
        try:
            async for status in hook.aiter_status(ref, logs=self.policy.log_fal_logs):
                event = follower.observed(status)
                if event is not None:
                    return event
        except Exception as err:
            return follower.broke(err)
        follower.ended()
        return None

    async def _wait_webhook(self, hook: Any, ref: FalRequestRef) -> dict[str, Any]:
        """Normally cancelled by the triggerer once the receiver has resumed the task; ends on its own
        only for a callback recorded before this trigger started, the backstop, or the deadline."""
        from fal_provider.webhooks.waiting import wait_for_webhook_or_backstop
        from fal_provider.webhooks.wake import task_event

        errors = ErrorTolerance(self.policy.max_consecutive_errors)

        async def poll_once() -> CompletedStatus | dict[str, Any] | None:
            try:
                status = await hook.aget_status(ref)
            except Exception as err:
                if not errors.tolerates(err):
                    return error_event(ref, err)
                self.log.warning(
                    "Backstop check of fal request %s failed (%d): %s", ref.request_id, errors.count, err
                )
                return None
            errors.succeeded()
            return status if isinstance(status, CompletedStatus) else None

        result = await wait_for_webhook_or_backstop(
            ref.request_id,
            poll_once,
            backstop_interval=self.policy.backstop_interval,
            end_time=self.policy.end_time,
        )
        if result.record is not None:
            self.log.info("fal request %s: callback recorded (%s)", ref.request_id, result.record.status)
            return task_event(result.record, self.request)
        status = result.status
        if isinstance(status, dict):
            return status
        if not isinstance(status, CompletedStatus):
            return timeout_event(ref, self.policy.end_time)
        self.log.info("fal request %s finished; no callback arrived, found by the backstop", ref.request_id)
        return backstop_event(status, ref)

    async def on_kill(self) -> None:
        """Cancel the fal request when a user kills the deferred task (Airflow >= 3.3).

        Airflow 3.3.2 also calls it on a trigger that moved to another triggerer (this one's
        heartbeat lapsed, a peer took the trigger over, and this one then drops it): the task is
        still ``deferred`` and waited for elsewhere, so its paid request must live on.
        """
        if await self._moved_elsewhere():
            return
        await self._cancel_request("on kill")

    async def _moved_elsewhere(self) -> bool:
        """True only when the task instance is known to be still ``deferred``; any doubt is False."""
        from fal_provider.triggers.kill import DEFERRED, task_instance_state

        task_instance = getattr(self, "task_instance", None)
        if task_instance is None or not self.cancel_on_kill or self._killed:
            return False
        try:
            state = await asyncio.wait_for(task_instance_state(task_instance), timeout=LEGACY_KILL_TIMEOUT)
        except Exception as err:
            self.log.warning("fal request %s: task state unknown (%s)", self.request.get("request_id"), err)
            return False
        if state != DEFERRED:
            return False
        self.log.info(
            "fal request %s: the task is still deferred (its trigger moved to another triggerer); "
            "not cancelling",
            self.request.get("request_id"),
        )
        return True

    async def _cancel_if_user_killed(self) -> None:
        """The Airflow < 3.3 stand-in for ``on_kill``, run when the triggerer cancels ``run()``.

        Never raises (the caller re-raises the cancellation) and is bounded, so a hung lookup or
        cancel call cannot hold the cancelled trigger.
        """
        from fal_provider.triggers.kill import is_user_kill, task_instance_state

        if not self.cancel_on_kill or self._killed:
            return
        request_id = self.request.get("request_id")
        task_instance = getattr(self, "task_instance", None)
        if task_instance is None:
            self.log.info(
                "fal request %s: wait cancelled, no task instance to ask; not cancelling", request_id
            )
            return
        try:
            state = await asyncio.wait_for(task_instance_state(task_instance), timeout=LEGACY_KILL_TIMEOUT)
        except Exception as err:
            self.log.warning(
                "fal request %s: wait cancelled, task state unknown (%s); not cancelling", request_id, err
            )
            return
        if not is_user_kill(state):
            self.log.info(
                "fal request %s: wait cancelled with the task %s (triggerer restart or move); not cancelling",
                request_id,
                state or "not found",
            )
            return
        try:
            await asyncio.wait_for(self._cancel_request(f"task {state}"), timeout=LEGACY_KILL_TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            self.log.warning("fal request %s: cancel on kill timed out", request_id)

    async def _cancel_request(self, why: str) -> None:
        """Cancel the fal request once, whichever kill path asks.

        Best effort and idempotent: a request that already finished answers ``ALREADY_COMPLETED``,
        and any error is logged, never raised, so the triggerer's cleanup always runs.
        """
        if not self.cancel_on_kill or self._killed:
            return
        self._killed = True
        request_id = self.request.get("request_id")
        try:
            if self.policy.wait_mode == "webhook" and not await self._still_running_per_webhook():
                return
            outcome = await self._hook().acancel(self.ref)
            self.log.info("Cancelled fal request %s (%s): %s", request_id, why, outcome)
        except Exception as err:
            self.log.warning("Could not cancel fal request %s (%s): %s", request_id, why, err)

    async def _still_running_per_webhook(self) -> bool:
        """A recorded callback means the receiver resumed the task (the triggerer then kills this
        trigger with the same signal as a user's mark-failed): the request is finished, skip the cancel."""
        from fal_provider.webhooks.waiting import should_cancel_on_kill

        if await should_cancel_on_kill(self.ref.request_id):
            return True
        self.log.info("fal request %s already reported by its callback; not cancelling", self.ref.request_id)
        return False
