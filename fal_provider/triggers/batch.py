"""The trigger a deferrable ``FalBatchOperator`` waits on: a window of fal requests, read only.

The worker submits, fetches results and writes the journal; this trigger only polls the status
of the requests the worker left running and says which have finished, so a triggerer restart
(which runs it again from ``serialize()``) never sends a paid request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fal_provider.exceptions import FalNotFoundError
from fal_provider.models import CompletedStatus, FalRequestRef
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.waiting import ErrorTolerance, error_event, jittered, sleep_on_tick

CLASSPATH = "fal_provider.triggers.batch.FalBatchTrigger"
#: Growth of the poll interval while nothing new finishes (from ``poll_interval`` up to
#: ``max_poll_interval``); reset when a request finishes, since others of the window often follow.
BACKOFF = 1.5


class FalBatchTrigger(FalRequestTrigger):
    """Wait until ``ready_count`` requests of a batch window have finished, then name them.

    A request trigger over several requests: it keeps :class:`FalRequestTrigger`'s kill handling
    (a user's kill or mark-failed cancels every request of the window still running; a triggerer
    restart or a move to another triggerer cancels none) and its poll settings; the wait and the
    cancel cover the whole window. The event is ``{"status": "success", "done": [request ids]}``
    (``error`` after more transient errors in a row than ``max_consecutive_errors``, or a
    permanent one). A request fal no longer knows counts as finished: the worker records it.

    :param requests: the window's request references (``FalRequestRef.to_xcom()``).
    :param ready_count: finished requests that end the wait (at least 1, at most all).
    """

    def __init__(
        self,
        *,
        requests: list[dict[str, Any]],
        ready_count: int = 1,
        fal_conn_id: str = "fal_default",
        cancel_on_kill: bool = True,
        **policy: Any,
    ) -> None:
        refs = [FalRequestRef.coerce(request).to_xcom() for request in requests]
        if not refs:
            raise ValueError("FalBatchTrigger needs at least one request to wait for")
        super().__init__(request=refs[0], fal_conn_id=fal_conn_id, cancel_on_kill=cancel_on_kill, **policy)
        self.requests = refs
        self.ready_count = max(1, min(int(ready_count), len(refs)))
        self._done: set[str] = set()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        del kwargs["request"]  # the first of ``requests``
        return CLASSPATH, {"requests": self.requests, "ready_count": self.ready_count, **kwargs}

    def _refs(self) -> list[FalRequestRef]:
        return [FalRequestRef.coerce(request) for request in self.requests]

    async def _wait(self, hook: Any, ref: FalRequestRef) -> dict[str, Any]:
        """Poll the requests not yet finished, all at once, until enough have finished."""
        refs = self._refs()
        errors = ErrorTolerance(self.policy.max_consecutive_errors)
        interval = self.policy.poll_interval
        while True:
            pending = [r for r in refs if r.request_id not in self._done]
            answers = await asyncio.gather(*(_finished(hook, r) for r in pending), return_exceptions=True)
            failure = next((a for a in answers if isinstance(a, Exception)), None)
            newly = {r.request_id for r, answer in zip(pending, answers, strict=True) if answer is True}
            self._done |= newly
            if len(self._done) >= self.ready_count:
                return {"status": "success", "request": self.request, "done": sorted(self._done)}
            if failure is not None:
                if not errors.tolerates(failure):
                    return error_event(ref, failure)
                self.log.warning("fal batch window: status check failed (%d): %s", errors.count, failure)
            else:
                errors.succeeded()
            interval = (
                self.policy.poll_interval if newly else min(interval * BACKOFF, self.policy.max_poll_interval)
            )
            await sleep_on_tick(jittered(interval))

    async def _cancel_request(self, why: str) -> None:
        """Cancel every request of the window not seen finished, once; never raises."""
        if not self.cancel_on_kill or self._killed:
            return
        self._killed = True
        hook = self._hook()
        running = [ref for ref in self._refs() if ref.request_id not in self._done]

        async def cancel(ref: FalRequestRef) -> None:
            try:
                outcome = await hook.acancel(ref)
                self.log.info("Cancelled fal request %s (%s): %s", ref.request_id, why, outcome)
            except Exception as err:
                self.log.warning("Could not cancel fal request %s (%s): %s", ref.request_id, why, err)

        await asyncio.gather(*(cancel(ref) for ref in running))


async def _finished(hook: Any, ref: FalRequestRef) -> bool:
    try:
        status = await hook.aget_status(ref)
    except FalNotFoundError:
        return True
    return isinstance(status, CompletedStatus)
