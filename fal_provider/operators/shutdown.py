"""A shutdown is not a cancel: what SIGTERM means for a task waiting on a paid fal request.

The Task SDK's own SIGTERM handler calls ``on_kill()``, which cancels the request, and the task
then fails on the cancelled request without using its retries. But the worker's task process gets
SIGTERM for two different reasons:

* a user marked the task failed or success, or cleared it: the supervisor's heartbeat is refused
  and it terminates the task. The request is not wanted any more: cancel it.
* the worker is shutting down (pod eviction, deploy, a worker restart) and the supervisor forwards
  the signal. The task is still ``running`` as far as Airflow knows, and its retry can reattach to
  the request: keep it, and end the try with a retryable error.

The supervisor also terminates a try the scheduler has already given up on (``up_for_retry``, e.g.
Airflow's own race when a trigger fires right after the defer); a retry follows, so that keeps
the request too. Only the task instance's state tells them apart, so while an operator waits it replaces the
handler with one that interrupts the wait (:class:`WorkerShutdown`, a ``BaseException`` so no
``except Exception`` in a wait loop swallows it), then asks Airflow for the state. An unknown state
(the lookup failed) keeps the request: a retry can always reattach, a cancel cannot be undone.
The rule: user kill / mark failed / mark success / clear -> cancel; shutdown -> keep for the retry;
``execution_timeout`` and the provider's own ``timeout`` -> cancel.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fal_provider.exceptions import FalTransientError

T = TypeVar("T")

#: States a user's action leaves behind (mark failed / success / skipped, clear): the request is
#: not wanted any more. ``cleared`` is how :func:`~fal_provider.triggers.kill.current_state`
#: reports a task instance without a state. Any other state (``running`` for a shutdown,
#: ``up_for_retry`` when the scheduler gave up on this try) means another try comes and reattaches.
USER_ACTION_STATES = frozenset({"failed", "success", "skipped", "removed", "restarting", "cleared"})


class WorkerShutdown(BaseException):
    """Raised from the SIGTERM handler to stop the wait, wherever it is blocked."""


class FalWorkerShutdown(FalTransientError):
    """The worker was shut down while the task waited; the retry reattaches to the request."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`WorkerShutdown` in the task's main thread.

    The previous handler (the Task SDK's) is restored on exit, and as soon as the signal arrives,
    so a second SIGTERM during the cleanup reaches it. Outside the main thread nothing changes
    (signals are only delivered there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != pid:  # a forked child inherited the handler: not the task process
            return
        signal.signal(signal.SIGTERM, previous)
        raise WorkerShutdown()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)


def task_state(context: Any) -> str | None:
    """The task instance's state as Airflow has it now; ``None`` when it cannot be known."""
    from fal_provider.triggers.kill import current_state

    ti = context.get("ti") if isinstance(context, dict) else None
    if ti is None:
        return None
    try:
        return current_state(ti)
    except Exception:
        return None


def run_guarded(
    context: Any,
    work: Callable[[], T],
    *,
    request: Callable[[], Any],
    cancel: Callable[[Any, str], None],
    cancel_on_kill: bool,
    log: Any,
) -> T:
    """Run ``work`` (an ``execute`` or ``execute_complete`` body) with SIGTERM telling a shutdown
    from a user's kill; ``request()`` names the fal request being waited for (or ``None``)."""
    try:
        with sigterm_interrupts():
            return work()
    except WorkerShutdown:
        pass
    ref = request()
    state = task_state(context)
    if state in USER_ACTION_STATES:
        if ref is not None and cancel_on_kill:
            cancel(ref, f"task {state} by a user")
        raise FalWorkerShutdown(
            f"Task terminated after a user's action (state {state}); its fal request was cancelled"
        ) from None
    request_id = getattr(ref, "request_id", None)
    log.warning(
        "SIGTERM while the task is running (worker shutdown or eviction, state %s): fal request %s is "
        "left running and the retry reattaches to it",
        state or "unknown",
        request_id,
    )
    raise FalWorkerShutdown(
        f"Worker shut down while waiting for fal request {request_id}; the retry reattaches to it",
        request_id=request_id,
    ) from None
