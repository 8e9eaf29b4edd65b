"""How a task waits for a fal request: the one wait policy, and the loop's decisions.

:class:`WaitPolicy` is the single value the operators and the sensor build from their parameters
and that the trigger (deferred, async) and :class:`SyncWaiter` (on the worker, blocking) both run
by. Both wait the same way: poll with an adaptive interval (or follow fal's status stream and fall
back to polling when it breaks), copy fal's queue position and log lines into the task log,
tolerate a bounded run of transient errors (:class:`ErrorTolerance`) and end with the same event
(the events section below). Keeping the policy here means a fix applies to every path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fal_provider import exceptions as fal_exceptions
from fal_provider._compat import AirflowException
from fal_provider.exceptions import FalError, FalInputError
from fal_provider.models import CompletedStatus, FalRequestRef, InProgressStatus, QueuedStatus, check_number

# ---------------------------------------------------------------------------
# Events: what every wait ends with, and their one validation
# The events a wait for a fal request ends with: their shape, how they are built, how they are read.
#
# Every way of waiting ends in the same small dict: the trigger's poll, stream and webhook modes,
# the webhook receiver waking a task from the API server, and the worker-side waiter. It holds the
# status and the request reference, never the result (the worker fetches it), so it stays small in
# the metadata database. :func:`validate_event` is the one check every ``execute_complete`` runs
# first; it accepts only the statuses listed here (an allow-list): two community providers shipped
# bugs where a ``cancelled`` or ``None`` event was treated as success.
# ---------------------------------------------------------------------------

#: Statuses an event may carry; anything else is a bug and fails loudly in :func:`validate_event`.
EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error"})


def completed_event(status: CompletedStatus, ref: FalRequestRef) -> dict[str, Any]:
    """The event for a finished request: status and fal's error text, never the result."""
    if status.failed:
        return {
            "status": "failed",
            "request": ref.to_xcom(),
            "error": status.error,
            "error_type": status.error_type,
        }
    # fal's timings (inference_time) ride along for the cost metrics; numbers only, JSON-safe.
    metrics = {
        k: v for k, v in status.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return {"status": "success", "request": ref.to_xcom(), **({"metrics": metrics} if metrics else {})}


def backstop_event(status: CompletedStatus, ref: FalRequestRef) -> dict[str, Any]:
    """A finished request found by the webhook mode's slow status check (no callback came)."""
    return {**completed_event(status, ref), "source": "backstop"}


def webhook_event(
    *, succeeded: bool, error: str | None, request: Mapping[str, Any] | None, request_id: str
) -> dict[str, Any]:
    """The event for fal's verified callback.

    ``OK`` (even with a ``payload_error``: the result can still be fetched from the queue) is
    ``success``; ``ERROR`` is ``failed`` with fal's error text.
    """
    event: dict[str, Any] = {
        "status": "success" if succeeded else "failed",
        "request": dict(request) if request else {"request_id": request_id},
        "source": "webhook",
    }
    if not succeeded:
        event["error"] = error or "fal reported the request as failed"
        event["error_type"] = "webhook_error"
    return event


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


def validate_event(event: Any) -> tuple[str, FalRequestRef]:
    """Return ``(status, ref)`` for a well-formed event; raise on anything else."""
    if not isinstance(event, dict):
        raise AirflowException(
            f"Expected a fal trigger event (a dict), got {type(event).__name__}: {event!r}"
        )
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise AirflowException(
            f"Unexpected fal trigger event status {status!r} (allowed: {sorted(EVENT_STATUSES)}): {event!r}"
        )
    try:
        ref = FalRequestRef.coerce(event.get("request"))
    except ValueError as err:
        raise AirflowException(f"fal trigger event without a valid request reference: {err}") from None
    return str(status), ref


def error_from_event(event: Mapping[str, Any]) -> Exception:
    """Rebuild the typed error an ``error`` event describes (only provider classes, by name)."""
    name = str(event.get("error_class") or "")
    cls = getattr(fal_exceptions, name, None)
    message = str(event.get("error") or "waiting for the fal request failed")
    if isinstance(cls, type) and issubclass(cls, FalError):
        return cls(message, error_type=event.get("error_type"))
    if event.get("retryable", True):
        return fal_exceptions.FalServerError(f"{name or 'Error'}: {message}")
    return fal_exceptions.FalPermanentError(f"{name or 'Error'}: {message}")


# ---------------------------------------------------------------------------
# Waiting: the policy, the cadence, error tolerance, the worker-side waiter
# ---------------------------------------------------------------------------

Status = QueuedStatus | InProgressStatus | CompletedStatus

WAIT_MODES = ("poll", "stream", "webhook")
#: ``webhook`` mode: one status GET per waiting request every two minutes, only if the callback is late.
DEFAULT_BACKSTOP_INTERVAL = 120.0
#: How much later than the task's own deadline Airflow's deferral timeout fires, as a backstop only.
DEFER_TIMEOUT_MARGIN = 120.0


def default_deferrable() -> bool:
    from fal_provider._compat import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


def resolve_webhook_deferrable(wait_mode: str, deferrable: bool | None, default: bool) -> bool:
    """``webhook`` only works deferred: the receiver resumes a *deferred* task, and a worker slot
    blocked for hours is what the mode exists to avoid. So it defers unless told not to, and an
    explicit ``deferrable=False`` is refused rather than silently polled."""
    if wait_mode != "webhook":
        return default if deferrable is None else deferrable
    if deferrable is False:
        raise FalInputError("wait_mode='webhook' needs deferrable=True (the receiver resumes deferred tasks)")
    return True


@dataclass(frozen=True)
class WaitPolicy:
    """Everything that decides how a request is waited for; checked when built (DAG parse time).

    :param wait_mode: ``poll`` (adaptive status polling), ``stream`` (fal's status SSE, falling
        back to polling if the stream breaks or ends early) or ``webhook`` (fal calls the API
        server back; only a slow status backstop runs meanwhile).
    :param poll_interval: floor of the adaptive poll interval, seconds.
    :param max_poll_interval: ceiling the interval grows to while the request is queued.
    :param max_consecutive_errors: transient errors in a row tolerated before the wait ends in ``error``.
    :param log_fal_logs: copy fal's log lines and queue position into the task log.
    :param backstop_interval: ``webhook`` mode: seconds between status checks if no callback comes.
    :param end_time: absolute epoch deadline (``None``: none), set when the wait starts
        (:meth:`until`); absolute so a triggerer restart does not restart the clock.
    """

    wait_mode: str = "poll"
    poll_interval: float = 1.0
    max_poll_interval: float = 30.0
    max_consecutive_errors: int = 5
    log_fal_logs: bool = False
    backstop_interval: float = DEFAULT_BACKSTOP_INTERVAL
    end_time: float | None = None

    @classmethod
    def from_task_params(
        cls,
        wait_mode: str,
        poll_interval: float,
        max_poll_interval: float,
        max_consecutive_errors: int,
        log_fal_logs: bool,
        backstop_interval: float,
        /,
    ) -> WaitPolicy:
        """The policy from the six wait parameters every waiting operator and the sensor take, in
        their signature order (the sensor's ``poke_interval`` is the poll interval); checked here."""
        wait = (wait_mode, poll_interval, max_poll_interval, max_consecutive_errors, log_fal_logs)
        return cls(*wait, backstop_interval=backstop_interval)

    def __post_init__(self) -> None:
        if self.wait_mode not in WAIT_MODES:
            raise FalInputError(
                f"Unknown wait_mode {self.wait_mode!r}: expected one of {', '.join(WAIT_MODES)}."
            )
        check_number(self.poll_interval, "poll_interval", positive=True)
        check_number(self.max_poll_interval, "max_poll_interval", positive=True)
        if self.max_poll_interval < self.poll_interval:
            raise FalInputError(
                f"max_poll_interval ({self.max_poll_interval}) must be >= poll_interval ({self.poll_interval})"
            )
        check_number(self.max_consecutive_errors, "max_consecutive_errors", integer=True, minimum=0)
        if isinstance(self.backstop_interval, bool) or not isinstance(self.backstop_interval, int | float):
            raise FalInputError(
                f"backstop_interval must be a number of seconds, got {self.backstop_interval!r}"
            )
        if self.backstop_interval <= 0:
            raise FalInputError(
                f"backstop_interval must be a positive number of seconds, got {self.backstop_interval!r}"
            )
        for name in ("poll_interval", "max_poll_interval", "backstop_interval"):
            object.__setattr__(self, name, float(getattr(self, name)))  # one type whichever caller built it

    def until(self, end_time: float | None) -> WaitPolicy:
        """This policy with its deadline fixed (the wait starts now)."""
        return dataclasses.replace(self, end_time=end_time)

    def remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()

    def as_kwargs(self) -> dict[str, Any]:
        """The policy as flat keyword arguments, the form a serialized trigger stores."""
        return dataclasses.asdict(self)


#: The longest wait between two polls of a *running* request with no better estimate: the bound
#: on how late a completion is seen (poll mode), unless ``poll_interval`` is larger.
RUNNING_DETECTION_BOUND = 5.0
#: Each wait is shortened by up to this fraction at random, so waiters started together (a
#: triggerer restart, a fan-out of 10,000 tasks) do not poll in lockstep. Never lengthened: the
#: bounds above still hold.
POLL_JITTER = 0.25
#: Share of a running request's run time so far waited before the next poll (no estimate).
RUNNING_RAMP = 0.5
_EWMA_WEIGHT = 0.3
_MAX_APPS_TRACKED = 1024


class RunTimes:
    """How long requests of each app ran, as observed by this process's waiters (an EWMA per app).

    A request of an app whose requests usually run 10 minutes does not need asking every few
    seconds in its first minutes. Kept per process (a triggerer learns from every request it
    waited on); bounded to :data:`_MAX_APPS_TRACKED` apps.
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def expected(self, app_id: str) -> float | None:
        return self._seconds.get(app_id)

    def record(self, app_id: str, seconds: float) -> None:
        if not (seconds > 0 and seconds < 7 * 86400):
            return
        old = self._seconds.get(app_id)
        if old is None and len(self._seconds) >= _MAX_APPS_TRACKED:
            self._seconds.pop(next(iter(self._seconds)))
        self._seconds[app_id] = seconds if old is None else old + _EWMA_WEIGHT * (seconds - old)


#: The process's observed run times (see :class:`RunTimes`).
RUN_TIMES = RunTimes()


class AdaptiveInterval:
    """The wait before the next poll, from what fal said: queue position, and time run so far.

    * Queued: grows by ``factor`` per poll, and is at least ``floor`` x half the queue position
      (a request behind 50 others is asked every ``25 x floor`` s), up to ``ceiling``.
    * Running, with an expected run time ``D`` (the app's observed run times) and a known start:
      half of what is left of ``D`` (so polls land closer and closer to the expected end), then,
      past ``D``, as without an estimate. fal's status carries no start time, so the start is
      known only to a waiter that saw the request queued: it counts from its last queued sighting
      (never later than the real start, so what is left is never overestimated). A request already
      running at the first poll (a triggerer restart, a warm runner) may have run for any time:
      what is left of ``D`` is unknown, so it is polled as without an estimate.
    * Running, no estimate: :data:`RUNNING_RAMP` (half) of the time run so far, between ``floor``
      and the running bound ``max(floor, min(ceiling, RUNNING_DETECTION_BOUND))``: a request that
      has run 10 s is unlikely to end in the next second, and half keeps the extra wait of a short
      request at most half its run time (a quarter made 16 polls of a 30 s request, half makes 11).

    Detection bound (poll mode): a completion is seen at most the running bound after it happens
    (plus one call and one :data:`POLL_TICK`; the jitter only shortens), except for a request seen
    queued that ends before its app's expected run time, which is seen within ``(D - t) / 2`` (t:
    time since its last queued sighting at the last poll), capped at ``ceiling``. On a loop with
    more pollers than ``5 s x max_poll_rate`` (10,000 by default) the bound is their spacing,
    ``pollers / max_poll_rate`` (see :class:`PollLoad`).
    """

    def __init__(
        self, floor: float, ceiling: float, factor: float = 1.5, *, expected: float | None = None
    ) -> None:
        self.floor = floor
        self.ceiling = max(ceiling, floor)
        self.factor = factor
        self.current = floor
        self.expected = expected
        self.running_bound = max(floor, min(self.ceiling, RUNNING_DETECTION_BOUND))
        self.running_since: float | None = None
        #: Last time the request was seen queued; set means the start of its run is bounded.
        self.queued_at: float | None = None

    def next(self, status: Status | None, now: float | None = None) -> float:
        """The wait before the next poll, given the status just seen (``None``: an error)."""
        if isinstance(status, InProgressStatus):
            now = time.monotonic() if now is None else now
            if self.running_since is None:
                self.running_since = now if self.queued_at is None else self.queued_at
            self.current = self._running_wait(now - self.running_since)
        else:
            if isinstance(status, QueuedStatus) and self.running_since is None:
                self.queued_at = time.monotonic() if now is None else now
            grown = self.current * self.factor
            position = getattr(status, "queue_position", None) or 0
            self.current = min(max(grown, self.floor * position / 2), self.ceiling)
        return self.current

    def _running_wait(self, elapsed: float) -> float:
        if self.expected is not None and self.queued_at is not None and elapsed < self.expected:
            return min(max((self.expected - elapsed) / 2, self.floor), self.ceiling)
        return min(max(elapsed * RUNNING_RAMP, self.floor), self.running_bound)


def jittered(seconds: float, rng: Any = random) -> float:
    """``seconds`` shortened by up to :data:`POLL_JITTER` at random (never lengthened)."""
    return seconds * (1.0 - POLL_JITTER * rng.random())


#: Poll waits on an event loop end on a grid of this many seconds of the loop's clock. Every
#: wake-up of an asyncio loop costs about 0.1 ms of CPU (a selector call, the timer heap) whatever
#: it then runs; 1,000 waiters each waking at its own instant spent as much on that as on their
#: polls, while on a shared tick the waiters due together wake in one loop iteration. Adds at
#: most one tick to a wait, and so to the detection bound. A quarter second: 1,000 pollers spent
#: 15-25 % less CPU than on a 0.1 s tick and made 4 % fewer polls, with the same detection p99
#: (``benchmarks/triggers_1000.py``), the jitter having shortened most waits by more than a tick.
POLL_TICK = 0.25


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def next_tick(now: float, seconds: float, tick: float = POLL_TICK) -> float:
    """The first multiple of ``tick`` at least ``seconds`` after ``now``: the same float for every
    waiter due within that tick."""
    return math.ceil((now + max(0.0, seconds)) / tick) * tick


async def sleep_on_tick(seconds: float, tick: float = POLL_TICK) -> None:
    """Sleep at least ``seconds``, until the :func:`next_tick` on the running loop's clock.

    ``call_at`` with that instant (not ``asyncio.sleep``, which adds a delay to a clock read of
    its own and so would scatter the waiters of one tick again).
    """
    loop = asyncio.get_running_loop()
    when = next_tick(loop.time(), seconds, tick)
    future = loop.create_future()
    handle = loop.call_at(when, _wake, future)
    try:
        await future
    finally:
        handle.cancel()


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
        # Only a waiter that copies fal's logs needs the de-duplication window (10,000 waiters on
        # one loop would otherwise each hold an empty deque and set for the collector to walk).
        self._seen: deque[tuple[Any, str]] | None = deque(maxlen=512) if enabled else None
        self._seen_set: set[tuple[Any, str]] | None = set() if enabled else None

    def report(self, status: Status) -> None:
        if status.status != self._last_state:
            self._last_state = status.status
            self.log.info("fal request %s is %s", self.ref.request_id, status.status)
        if not self.enabled:
            return
        if isinstance(status, QueuedStatus) and status.queue_position != self._last_position:
            self._last_position = status.queue_position
            self.log.info("fal request %s: queue position %s", self.ref.request_id, status.queue_position)
        seen, seen_set = self._seen, self._seen_set
        assert seen is not None and seen_set is not None
        for entry in status.logs or []:
            key = (entry.timestamp, entry.message)
            if key in seen_set:
                continue
            if len(seen) == seen.maxlen:
                seen_set.discard(seen[0])
            seen.append(key)
            seen_set.add(key)
            self.log.info("[fal %s] %s", entry.level or "LOG", entry.message)


def is_transient(err: BaseException) -> bool:
    """Errors worth another try: the hook's transient errors and raw network trouble."""
    if isinstance(err, FalError):
        return bool(err.retryable)
    import httpx

    return isinstance(err, httpx.TransportError | OSError)


class ErrorTolerance:
    """The run of consecutive transient errors a wait tolerates; the only place they are counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def succeeded(self) -> None:
        self.count = 0

    def tolerates(self, err: BaseException) -> bool:
        """Count ``err``; True while the wait may go on (a transient error within the limit)."""
        if not is_transient(err):
            return False
        self.count += 1
        return self.count <= self.limit


class PollPolicy:
    """What to do after each status poll: stop with an event, or wait this many seconds.

    The trigger (async) and the worker (sync) run the same loop around different I/O; this holds
    everything in that loop that is not I/O, so both count errors, back off and report alike.
    """

    def __init__(
        self,
        ref: FalRequestRef,
        policy: WaitPolicy,
        log: logging.Logger | Any,
        *,
        load: PollLoad | None = None,
    ) -> None:
        """``load``: the pollers of the event loop this one shares (a trigger's), which space their
        polls out together; ``None`` for a waiter alone in its process."""
        self.ref = ref
        self.log = log
        self.interval = AdaptiveInterval(
            policy.poll_interval, policy.max_poll_interval, expected=RUN_TIMES.expected(ref.app_id)
        )
        self.reporter = StatusReporter(log, policy.log_fal_logs, ref)
        self.errors = ErrorTolerance(policy.max_consecutive_errors)
        self.load = load

    def observed(self, status: Status) -> dict[str, Any] | float:
        """A status arrived: the final event, or the (jittered) wait before the next poll."""
        self.errors.succeeded()
        self.reporter.report(status)
        if isinstance(status, CompletedStatus):
            self._learn(status)
            return completed_event(status, self.ref)
        if self.interval.expected is None and isinstance(status, InProgressStatus):
            self.interval.expected = RUN_TIMES.expected(self.ref.app_id)  # a peer may have finished
        wait = self.interval.next(status)
        return jittered(wait if self.load is None else max(wait, self.load.spacing()))

    def _learn(self, status: CompletedStatus) -> None:
        """Record how long this request ran: fal's ``inference_time``, else what this wait saw."""
        seconds = status.metrics.get("inference_time") if status.metrics else None
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            since = self.interval.running_since
            seconds = None if since is None else time.monotonic() - since
        if seconds is not None and not status.failed:
            RUN_TIMES.record(self.ref.app_id, float(seconds))

    def failed(self, err: Exception) -> dict[str, Any] | float:
        """A poll raised: an ``error`` event once it is permanent or too many in a row, else a wait
        (fal's ``Retry-After`` when it gave one)."""
        if not self.errors.tolerates(err):
            return error_event(self.ref, err)
        self.log.warning(
            "Polling fal request %s failed (%d/%d): %s",
            self.ref.request_id,
            self.errors.count,
            self.errors.limit,
            err,
        )
        return float(getattr(err, "retry_after", None) or self.interval.next(None))


#: Status polls a second that the poll waiters of one event loop make together at most
#: (``[fal] max_poll_rate``; 0: no limit), by spacing each one's polls ``pollers / rate`` s apart at
#: least. The adaptive interval asks a fresh request every second at first: 10,000 waiters started
#: together (a fan-out, a triggerer restart) asked 10,000 times a second for seconds, more than a
#: loop (or fal) answers, and the backlog delayed every poll behind it by seconds long after.
DEFAULT_MAX_POLL_RATE = 2000.0


class PollLoad:
    """The poll waiters one event loop holds, and the spacing that keeps them under ``rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.pollers = 0

    def spacing(self) -> float:
        """The shortest wait between two polls of one waiter while this many poll."""
        return self.pollers / self.rate if self.rate > 0 else 0.0


def poll_load() -> PollLoad:
    """The running loop's poll load (created with the configured rate on first use)."""
    return _of_running_loop(PollLoad, lambda: PollLoad(_fal_number("max_poll_rate", DEFAULT_MAX_POLL_RATE)))


#: Status streams one event loop keeps open before further waiters poll instead
#: (``[fal] max_status_streams``), and never more than half the process's open-file limit
#: (:func:`stream_limit`): each open stream holds a socket for the whole wait. 10,000 streams cost
#: a triggerer less CPU than 10,000 pollers and see completions ten times sooner
#: (``benchmarks/triggers_1000.py``), so the default covers a full triggerer.
DEFAULT_MAX_STATUS_STREAMS = 10000
#: New streams are opened over up to this many seconds once many are open, not all at once.
STREAM_OPEN_SPREAD = 1.0


class StreamSlots:
    """How many status streams are open on one event loop, against the configured maximum."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        """A slot for one more stream, or False: the waiter polls instead."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1

    def open_delay(self, rng: Any = random) -> float:
        """A random delay before opening: none while few streams are open, up to
        :data:`STREAM_OPEN_SPREAD` s as the loop nears its limit (spreads reconnect storms)."""
        return STREAM_OPEN_SPREAD * min(1.0, self.open / max(1, self.limit)) * rng.random()


def stream_slots() -> StreamSlots:
    """The running loop's stream slots (created with :func:`stream_limit` on first use)."""
    return _of_running_loop(StreamSlots, lambda: StreamSlots(stream_limit()))


def stream_limit() -> int:
    """``[fal] max_status_streams``, capped at half the soft ``RLIMIT_NOFILE``.

    Many hosts start the triggerer with 1,024 open files; more streams than that cannot all
    connect, and would take the descriptors the poll connections and the metadata database need.
    Half leaves the rest to them; raise the limit (``ulimit -n``) to stream more.
    """
    configured = int(_fal_number("max_status_streams", DEFAULT_MAX_STATUS_STREAMS))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no such limit (Windows)
        return configured
    return configured if soft == resource.RLIM_INFINITY else min(configured, soft // 2)


#: What each event loop's waiters share (its :class:`PollLoad`, its :class:`StreamSlots`), by kind.
_per_loop: weakref.WeakKeyDictionary[Any, dict[type, Any]] = weakref.WeakKeyDictionary()
_T = TypeVar("_T")


def _of_running_loop(kind: type[_T], make: Callable[[], _T]) -> _T:
    shared = _per_loop.setdefault(asyncio.get_running_loop(), {})
    if kind not in shared:
        shared[kind] = make()
    return cast("_T", shared[kind])


def _fal_number(name: str, default: float) -> float:
    """``[fal] name`` as a number of at least 0; ``default`` when unset or not a number."""
    from fal_provider._compat import conf

    try:
        value = conf.getfloat("fal", name, fallback=default)
    except (ValueError, TypeError):
        return default
    return max(0.0, float(value))


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


class SyncWaiter:
    """Wait on the worker (``deferrable=False``): the trigger's loop with blocking I/O.

    Blocks until the request finishes or the policy's absolute deadline passes, and returns the
    same event the trigger would, so the completion handler does not care which path produced it.
    """

    def __init__(self, hook: Any, policy: WaitPolicy, *, log: Any) -> None:
        self.hook = hook
        self.policy = policy
        self.log = log

    def wait(self, ref: FalRequestRef) -> dict[str, Any]:
        if self.policy.wait_mode == "stream":
            event = self._stream(ref)
            if event is not None:
                return event
        return self._poll(ref)

    def _poll(self, ref: FalRequestRef) -> dict[str, Any]:
        policy = PollPolicy(ref, self.policy, self.log)
        while True:
            remaining = self.policy.remaining()
            if remaining is not None and remaining <= 0:
                return timeout_event(ref, self.policy.end_time)
            try:
                status = self.hook.get_status(ref, logs=self.policy.log_fal_logs)
            except Exception as err:
                step = policy.failed(err)
            else:
                step = policy.observed(status)
            if isinstance(step, dict):
                return step
            self._sleep(step)

    def _sleep(self, seconds: float) -> None:
        remaining = self.policy.remaining()
        time.sleep(max(0.0, seconds if remaining is None else min(seconds, remaining)))

    def _stream(self, ref: FalRequestRef) -> dict[str, Any] | None:
        """Follow the status SSE; ``None`` hands over to polling (broken stream or deadline check)."""
        follower = StreamFollower(ref, log=self.log, log_fal_logs=self.policy.log_fal_logs)
        try:
            for status in self.hook.iter_status(ref, logs=self.policy.log_fal_logs):
                event = follower.observed(status)
                if event is not None:
                    return event
                remaining = self.policy.remaining()
                if remaining is not None and remaining <= 0:
                    return timeout_event(ref, self.policy.end_time)
        except Exception as err:
            return follower.broke(err)
        follower.ended()
        return None
