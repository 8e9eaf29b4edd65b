"""Waiting policy shared by the trigger (async) and the non-deferrable path (sync).

Both wait the same way: poll with an adaptive interval, copy fal's queue position and log lines
into the task log, count consecutive transient errors, and turn the final status into the same
small event dict. Keeping the policy here means a fix applies to both paths.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Protocol

from fal_provider import exceptions as fal_exceptions
from fal_provider.exceptions import FalError
from fal_provider.models import CompletedStatus, FalRequestRef, InProgressStatus, QueuedStatus

Status = QueuedStatus | InProgressStatus | CompletedStatus

#: Statuses an event may carry; anything else is a bug and fails loudly in the completion handler.
EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error"})
WAIT_MODES = ("poll", "stream", "webhook")


def validate_wait_mode(wait_mode: Any) -> str:
    """Reject unknown modes early, at DAG parse time rather than in the triggerer."""
    if wait_mode not in WAIT_MODES:
        raise ValueError(f"Unknown wait_mode {wait_mode!r}: expected one of {', '.join(WAIT_MODES)}.")
    return str(wait_mode)


def resolve_webhook_deferrable(wait_mode: str, deferrable: bool | None, default: bool) -> bool:
    """``webhook`` only works deferred: the receiver resumes a *deferred* task, and a worker slot
    blocked for hours is what the mode exists to avoid. So it defers unless told not to, and an
    explicit ``deferrable=False`` is refused rather than silently polled."""
    if wait_mode != "webhook":
        return default if deferrable is None else deferrable
    if deferrable is False:
        raise ValueError("wait_mode='webhook' needs deferrable=True (the receiver resumes deferred tasks)")
    return True


def validate_backstop_interval(backstop_interval: Any) -> float:
    if isinstance(backstop_interval, bool) or not isinstance(backstop_interval, int | float):
        raise ValueError(f"backstop_interval must be a number of seconds, got {backstop_interval!r}")
    if backstop_interval <= 0:
        raise ValueError(f"backstop_interval must be a positive number of seconds, got {backstop_interval!r}")
    return float(backstop_interval)


def validate_intervals(poll_interval: float, max_poll_interval: float) -> None:
    if not poll_interval or poll_interval <= 0:
        raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
    if max_poll_interval < poll_interval:
        raise ValueError(
            f"max_poll_interval ({max_poll_interval}) must be >= poll_interval ({poll_interval})"
        )


class AdaptiveInterval:
    """Poll often while a request runs, back off while it only waits in the queue.

    A queued request can sit for minutes; polling it every second costs HTTP calls for nothing.
    Once it starts, completion is near, so the interval drops back to the floor.
    """

    def __init__(self, floor: float, ceiling: float, factor: float = 1.5) -> None:
        self.floor = floor
        self.ceiling = max(ceiling, floor)
        self.factor = factor
        self.current = floor

    def next(self, status: Status | None) -> float:
        """The wait before the next poll, given the status just seen (``None``: an error)."""
        if isinstance(status, InProgressStatus):
            self.current = self.floor
        else:
            self.current = min(self.current * self.factor, self.ceiling)
        return self.current


class StatusReporter:
    """Copy queue position changes and new fal log lines into a task (or trigger) log.

    fal returns log entries from a moving window, so the same line can appear in several answers;
    a bounded set of recent entries de-duplicates them without growing forever.
    """

    def __init__(self, log: logging.Logger | Any, enabled: bool, ref: FalRequestRef) -> None:
        self.log = log
        self.enabled = enabled
        self.ref = ref
        self._last_state: str | None = None
        self._last_position: int | None = None
        self._seen: deque[tuple[Any, str]] = deque(maxlen=512)
        self._seen_set: set[tuple[Any, str]] = set()

    def report(self, status: Status) -> None:
        if status.status != self._last_state:
            self._last_state = status.status
            self.log.info("fal request %s is %s", self.ref.request_id, status.status)
        if not self.enabled:
            return
        if isinstance(status, QueuedStatus) and status.queue_position != self._last_position:
            self._last_position = status.queue_position
            self.log.info("fal request %s: queue position %s", self.ref.request_id, status.queue_position)
        for entry in status.logs or []:
            key = (entry.timestamp, entry.message)
            if key in self._seen_set:
                continue
            if len(self._seen) == self._seen.maxlen:
                self._seen_set.discard(self._seen[0])
            self._seen.append(key)
            self._seen_set.add(key)
            self.log.info("[fal %s] %s", entry.level or "LOG", entry.message)


def completed_event(status: CompletedStatus, ref: FalRequestRef) -> dict[str, Any]:
    """The small event for a finished request: status and fal's error text, never the result."""
    if status.failed:
        return {
            "status": "failed",
            "request": ref.to_xcom(),
            "error": status.error,
            "error_type": status.error_type,
        }
    return {"status": "success", "request": ref.to_xcom()}


def timeout_event(ref: FalRequestRef, end_time: float | None) -> dict[str, Any]:
    return {
        "status": "timeout",
        "request": ref.to_xcom(),
        "error": f"fal request {ref.request_id} did not finish before the deadline (epoch {end_time})",
        "error_type": "timeout",
    }


def error_event(ref: FalRequestRef, err: BaseException) -> dict[str, Any]:
    """Describe an error that ended the wait so the worker can re-raise the same class."""
    return {
        "status": "error",
        "request": ref.to_xcom(),
        "error": str(err)[:2000],
        "error_type": getattr(err, "error_type", None),
        "error_class": type(err).__name__,
        "retryable": bool(getattr(err, "retryable", True)),
    }


def error_from_event(event: dict[str, Any]) -> Exception:
    """Rebuild the typed error an ``error`` event describes (only provider classes, by name)."""
    name = str(event.get("error_class") or "")
    cls = getattr(fal_exceptions, name, None)
    message = str(event.get("error") or "waiting for the fal request failed")
    if isinstance(cls, type) and issubclass(cls, FalError):
        return cls(message, error_type=event.get("error_type"))
    if event.get("retryable", True):
        return fal_exceptions.FalServerError(f"{name or 'Error'}: {message}")
    return fal_exceptions.FalPermanentError(f"{name or 'Error'}: {message}")


def is_transient(err: BaseException) -> bool:
    """Errors worth another poll: the hook's transient errors and raw network trouble."""
    if isinstance(err, FalError):
        return bool(err.retryable)
    import httpx

    return isinstance(err, httpx.TransportError | OSError)


class WaitSettings(Protocol):
    """The waiting knobs the trigger and the worker-side waiter both carry, under the same names."""

    poll_interval: float
    max_poll_interval: float
    max_consecutive_errors: int
    log_fal_logs: bool

    @property
    def log(self) -> logging.Logger | Any: ...


class PollPolicy:
    """What to do after each status poll: stop with an event, or wait this many seconds.

    The trigger (async) and the worker (sync) run the same loop around different I/O; this holds
    everything in that loop that is not I/O, so both count errors, back off and report alike.
    """

    def __init__(
        self,
        ref: FalRequestRef,
        *,
        poll_interval: float,
        max_poll_interval: float,
        max_consecutive_errors: int,
        log: logging.Logger | Any,
        log_fal_logs: bool,
    ) -> None:
        self.ref = ref
        self.max_consecutive_errors = max_consecutive_errors
        self.log = log
        self.interval = AdaptiveInterval(poll_interval, max_poll_interval)
        self.reporter = StatusReporter(log, log_fal_logs, ref)
        self.errors = 0

    @classmethod
    def of(cls, waiter: WaitSettings, ref: FalRequestRef) -> PollPolicy:
        return cls(
            ref,
            poll_interval=waiter.poll_interval,
            max_poll_interval=waiter.max_poll_interval,
            max_consecutive_errors=waiter.max_consecutive_errors,
            log=waiter.log,
            log_fal_logs=waiter.log_fal_logs,
        )

    def observed(self, status: Status) -> dict[str, Any] | float:
        """A status arrived: the final event, or the wait before the next poll."""
        self.errors = 0
        self.reporter.report(status)
        if isinstance(status, CompletedStatus):
            return completed_event(status, self.ref)
        return self.interval.next(status)

    def failed(self, err: Exception) -> dict[str, Any] | float:
        """A poll raised: an ``error`` event once it is permanent or too many in a row, else a wait
        (fal's ``Retry-After`` when it gave one)."""
        if not is_transient(err):
            return error_event(self.ref, err)
        self.errors += 1
        if self.errors > self.max_consecutive_errors:
            return error_event(self.ref, err)
        self.log.warning(
            "Polling fal request %s failed (%d/%d): %s",
            self.ref.request_id,
            self.errors,
            self.max_consecutive_errors,
            err,
        )
        return float(getattr(err, "retry_after", None) or self.interval.next(None))


class StreamFollower:
    """What to do with each message of fal's status stream and with its end.

    ``None`` from :meth:`broke` or :meth:`ended` hands over to polling.
    """

    def __init__(self, ref: FalRequestRef, *, log: logging.Logger | Any, log_fal_logs: bool) -> None:
        self.ref = ref
        self.log = log
        self.reporter = StatusReporter(log, log_fal_logs, ref)

    def observed(self, status: Status) -> dict[str, Any] | None:
        self.reporter.report(status)
        if isinstance(status, CompletedStatus):
            return completed_event(status, self.ref)
        return None

    def broke(self, err: Exception) -> dict[str, Any] | None:
        if not is_transient(err):
            return error_event(self.ref, err)
        self.log.warning("fal status stream for %s broke (%s); polling instead", self.ref.request_id, err)
        return None

    def ended(self) -> None:
        self.log.warning(
            "fal status stream for %s ended before COMPLETED; polling instead", self.ref.request_id
        )
