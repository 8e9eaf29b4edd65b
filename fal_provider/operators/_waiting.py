"""Waiting on the worker (``deferrable=False``), with the trigger's policy.

The loop is :class:`~fal_provider.triggers.fal.FalRequestTrigger`'s with blocking I/O: both take
their decisions from :mod:`fal_provider.triggers._wait` (``PollPolicy``, ``StreamFollower``) and
return the same event dict, so the completion handler does not care which path produced it.
"""

from __future__ import annotations

import time
from typing import Any

from fal_provider.models import FalRequestRef
from fal_provider.triggers._wait import PollPolicy, StreamFollower, timeout_event


class SyncWaiter:
    """Block until the request finishes or the absolute deadline passes."""

    def __init__(
        self,
        hook: Any,
        *,
        wait_mode: str,
        poll_interval: float,
        max_poll_interval: float,
        end_time: float | None,
        max_consecutive_errors: int,
        log_fal_logs: bool,
        log: Any,
    ) -> None:
        self.hook = hook
        self.wait_mode = wait_mode
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.end_time = end_time
        self.max_consecutive_errors = max_consecutive_errors
        self.log_fal_logs = log_fal_logs
        self.log = log

    def _remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()

    def wait(self, ref: FalRequestRef) -> dict[str, Any]:
        if self.wait_mode == "stream":
            event = self._stream(ref)
            if event is not None:
                return event
        return self._poll(ref)

    def _poll(self, ref: FalRequestRef) -> dict[str, Any]:
        policy = PollPolicy.of(self, ref)
        while True:
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                return timeout_event(ref, self.end_time)
            try:
                status = self.hook.get_status(ref, logs=self.log_fal_logs)
            except Exception as err:
                step = policy.failed(err)
            else:
                step = policy.observed(status)
            if isinstance(step, dict):
                return step
            self._sleep(step)

    def _sleep(self, seconds: float) -> None:
        remaining = self._remaining()
        time.sleep(max(0.0, seconds if remaining is None else min(seconds, remaining)))

    def _stream(self, ref: FalRequestRef) -> dict[str, Any] | None:
        """Follow the status SSE; ``None`` hands over to polling (broken stream or deadline check)."""
        follower = StreamFollower(ref, log=self.log, log_fal_logs=self.log_fal_logs)
        try:
            for status in self.hook.iter_status(ref, logs=self.log_fal_logs):
                event = follower.observed(status)
                if event is not None:
                    return event
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return timeout_event(ref, self.end_time)
        except Exception as err:
            return follower.broke(err)
        follower.ended()
        return None
