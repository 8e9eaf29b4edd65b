"""Waiting on the worker (``deferrable=False``), with the trigger's policy.

The loop mirrors :class:`~fal_provider.triggers.fal.FalRequestTrigger` and returns the same event
dict, so the completion handler does not care which path produced it.
"""

from __future__ import annotations

import time
from typing import Any

from fal_provider.models import CompletedStatus, FalRequestRef
from fal_provider.triggers._wait import (
    AdaptiveInterval,
    StatusReporter,
    completed_event,
    error_event,
    is_transient,
    timeout_event,
)


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
        interval = AdaptiveInterval(self.poll_interval, self.max_poll_interval)
        reporter = StatusReporter(self.log, self.log_fal_logs, ref)
        errors = 0
        while True:
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                return timeout_event(ref, self.end_time)
            try:
                status = self.hook.get_status(ref, logs=self.log_fal_logs)
            except Exception as err:
                if not is_transient(err):
                    return error_event(ref, err)
                errors += 1
                if errors > self.max_consecutive_errors:
                    return error_event(ref, err)
                self.log.warning("Polling fal request %s failed (%d): %s", ref.request_id, errors, err)
                self._sleep(getattr(err, "retry_after", None) or interval.next(None))
                continue
            errors = 0
            reporter.report(status)
            if isinstance(status, CompletedStatus):
                return completed_event(status, ref)
            self._sleep(interval.next(status))

    def _sleep(self, seconds: float) -> None:
        remaining = self._remaining()
        time.sleep(max(0.0, seconds if remaining is None else min(seconds, remaining)))

    def _stream(self, ref: FalRequestRef) -> dict[str, Any] | None:
        """Follow the status SSE; ``None`` hands over to polling (broken stream or deadline check)."""
        reporter = StatusReporter(self.log, self.log_fal_logs, ref)
        try:
            for status in self.hook.iter_status(ref, logs=self.log_fal_logs):
                reporter.report(status)
                if isinstance(status, CompletedStatus):
                    return completed_event(status, ref)
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return timeout_event(ref, self.end_time)
        except Exception as err:
            if not is_transient(err):
                return error_event(ref, err)
            self.log.warning("fal status stream for %s broke (%s); polling instead", ref.request_id, err)
            return None
        self.log.warning("fal status stream for %s ended before COMPLETED; polling instead", ref.request_id)
        return None
