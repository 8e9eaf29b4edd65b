"""What happens to a fal request around the task that pays for it: its life across tries and signals.

Every operator that submits a request, and the sensor that waits on one, goes through the same
steps, so they share one home, in this order:

* completion: the one place that decides what a finished wait means (every ``execute_complete``);
* shutdown: SIGTERM is a shutdown (keep the request, retry) or a user's kill (cancel it);
* the "fal request" extra link, published before deferring so it shows while the task waits;
* reattach: the submitted request remembered across tries, so a retry does not pay twice;
* the task log of the streaming and realtime operators: bounded, naming the app;
* money: tags on the submit, ``max_cost`` and named budgets before it, the cost record after the
  result, and the spend across tries (kept in the same per-task slot as the reattach reference).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, urlparse

from airflow.sdk import BaseOperatorLink

from fal_provider import budgets
from fal_provider._compat import AIRFLOW_V_3_3_PLUS, TaskDeferred
from fal_provider.exceptions import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalInputError,
    FalNotFoundError,
    FalPermanentError,
    FalTimeoutError,
    FalTransientError,
    error_from_completed,
)
from fal_provider.hooks.platform import CostRecord, cost_record, endpoint_of, money
from fal_provider.models import (
    TAGS_HEADER,
    CompletedStatus,
    FalRequestRef,
    check_budget_name,
    check_max_cost,
    check_tags,
    loads_if_json,
    request_tags,
    tags_header,
)
from fal_provider.waiting import Status, error_from_event, validate_event

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey


# ---------------------------------------------------------------------------
# Completion: what a finished wait means
# The one place that decides what a finished wait means.
#
# The same handler serves a request that was already done before deferring, the non-deferrable
# wait, ``execute_complete`` of every operator and the sensor's poke. It reads the event through
# :func:`fal_provider.waiting.validate_event`, which accepts only the statuses it knows.
# ---------------------------------------------------------------------------


#: Errors that describe fetching the result rather than the request's own failure.
_FETCH_ERRORS = (FalNotFoundError, FalAuthError, FalConnectionError, FalTimeoutError)


def failure_error(hook: Any, ref: FalRequestRef, error: str | None, error_type: str | None) -> FalError:
    """Classify a failed request, preferring the error fal's result endpoint passes through.

    The result endpoint returns the model's own error answer (a 422 with a ``detail`` list for bad
    input), which says more than the status' ``error`` text and decides retryability. When it is
    unavailable (expired, network), the status' ``error`` / ``error_type`` decide.
    """
    try:
        hook.get_result(ref)
    except _FETCH_ERRORS as err:
        log.info("Could not fetch the error body of fal request %s (%s)", ref.request_id, err)
    except FalError as err:
        if err.request_id is None:
            err.request_id = ref.request_id
        return err
    return error_from_completed(error, error_type, app_id=ref.app_id, request_id=ref.request_id)


def cancel_quietly(hook: Any, ref: FalRequestRef, reason: str) -> None:
    """Cancel without letting a cancel problem hide the error that caused it."""
    try:
        outcome = hook.cancel(ref)
        log.info("Cancelled fal request %s (%s): %s", ref.request_id, reason, outcome)
    except Exception as err:
        log.warning("Could not cancel fal request %s (%s): %s", ref.request_id, reason, err)


def raise_unless_success(event: Any, hook: Any) -> FalRequestRef:
    """Return the request reference when the event says success; raise the right error otherwise.

    ``timeout`` cancels the request (nothing orphaned) and raises a retryable ``FalTimeoutError``;
    ``failed`` raises fal's classified error; ``error`` re-raises what stopped the wait (see
    :func:`wait_failed`).
    """
    status, ref = validate_event(event)
    if status == "success":
        return ref
    if status == "timeout":
        cancel_quietly(hook, ref, "timeout")
        raise FalTimeoutError(
            str(event.get("error") or f"fal request {ref.request_id} timed out"),
            error_type="timeout",
            request_id=ref.request_id,
        )
    if status == "failed":
        raise failure_error(hook, ref, event.get("error"), event.get("error_type"))
    raise wait_failed(hook, ref, error_from_event(event))


def wait_failed(hook: Any, ref: FalRequestRef, err: Exception) -> Exception:
    """Decide the fate of a request whose wait broke for a reason other than the request itself.

    A retryable error (fal or the network flaked too often) leaves the request running: the task's
    retry reattaches to it. A permanent one (e.g. the trigger could not read the connection) means
    no try will come back for it, so it is cancelled instead of running, and billing, unattended.
    Both say so in the task log.
    """
    if getattr(err, "retryable", True):
        log.warning(
            "Waiting for fal request %s failed (%s); the request is left running for the task's retry "
            "to reattach to",
            ref.request_id,
            err,
        )
    else:
        log.warning(
            "Waiting for fal request %s failed for good (%s); cancelling it so it does not run unattended",
            ref.request_id,
            err,
        )
        cancel_quietly(hook, ref, "wait failed")
    return err


# ---------------------------------------------------------------------------
# Shutdown: SIGTERM, a shutdown or a kill
# A shutdown is not a cancel: what SIGTERM means for a task waiting on a paid fal request.
#
# The Task SDK's own SIGTERM handler calls ``on_kill()``, which cancels the request, and the task
# then fails on the cancelled request without using its retries. But the worker's task process gets
# SIGTERM for two different reasons:
#
# * a user marked the task failed or success, or cleared it: the supervisor's heartbeat is refused
#   and it terminates the task. The request is not wanted any more: cancel it.
# * the worker is shutting down (pod eviction, deploy, a worker restart) and the supervisor forwards
#   the signal. The task is still ``running`` as far as Airflow knows, and its retry can reattach to
#   the request: keep it, and end the try with a retryable error.
#
# The supervisor also terminates a try the scheduler has already given up on (``up_for_retry``, e.g.
# Airflow's own race when a trigger fires right after the defer); a retry follows, so that keeps
# the request too. Only the task instance's state tells them apart, so while an operator waits it replaces the
# handler with one that interrupts the wait (:class:`WorkerShutdown`, a ``BaseException`` so no
# ``except Exception`` in a wait loop swallows it), then asks Airflow for the state. An unknown state
# (the lookup failed) keeps the request: a retry can always reattach, a cancel cannot be undone.
# The rule: user kill / mark failed / mark success / clear -> cancel; shutdown -> keep for the retry;
# ``execution_timeout`` and the provider's own ``timeout`` -> cancel.
# ---------------------------------------------------------------------------

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


def guard(task: Any, context: Any, work: Callable[[], T], *, request_attr: str) -> T:
    """Run a waiting task's ``execute`` / ``execute_complete`` body under :func:`run_guarded`.

    ``task`` is an operator or the sensor (``hook``, ``cancel_on_kill``, ``log``); its attribute
    ``request_attr`` holds the request being waited for. Once the body defers, the trigger waits: a
    SIGTERM before this process exits (the Task SDK's handler calls ``on_kill``) is a shutdown, not
    a reason to cancel that request, so the attribute is cleared.
    """
    try:
        return run_guarded(
            context,
            work,
            request=lambda: getattr(task, request_attr),
            cancel=lambda ref, why: cancel_quietly(task.hook, ref, why),
            cancel_on_kill=task.cancel_on_kill,
            log=task.log,
        )
    except TaskDeferred:
        setattr(task, request_attr, None)
        raise


# ---------------------------------------------------------------------------
# The "fal request" extra link
# The "fal request" extra link.
#
# Airflow 3 materialises extra links on the worker when a try ends, including a try that ends in
# DEFERRED, so the operators and the sensor push the URL (and the request reference) before deferring
# (:func:`publish_request`) and the link shows while they wait.
#
# Where it points, first match wins (``{request_id}`` and ``{app_id}`` are filled in): the
# connection's ``request_page_url`` extra, a page its server shows a person (the emulator's
# connection helpers set it to the emulator's own request page); on fal's hosts, fal's dashboard
# (fal documents no per-request URL, so the default opens the request list filtered by the id,
# ``?requestId=``, which degrades to the plain list; ``[fal] dashboard_request_url`` /
# ``AIRFLOW__FAL__DASHBOARD_REQUEST_URL`` changes it); elsewhere (a proxy) the status URL.
#
# The ``fal_request`` XCom also names the connection (``conn_id``), so the task view on the API
# server asks that connection's fal for live status; reading it back as a reference ignores it.
# ---------------------------------------------------------------------------

#: XCom key of the request reference pushed before waiting (handy for other tasks and debugging).
REQUEST_XCOM_KEY = "fal_request"
LINK_XCOM_KEY = "fal_request_url"
DEFAULT_DASHBOARD_URL = "https://fal.ai/dashboard/requests?requestId={request_id}"
_FAL_HOSTS = ("fal.run", "fal.ai", "falrun.com")


def _is_fal_host(url: str | None) -> bool:
    host = (urlparse(url or "").hostname or "").lower()
    return any(host == name or host.endswith("." + name) for name in _FAL_HOSTS)


def request_url(ref: FalRequestRef, queue_url: str | None, page_url: str | None = None) -> str:
    """The page to open for a request: the connection's request page, fal's dashboard, or the status URL."""
    if page_url:
        return page_url.format(request_id=quote(ref.request_id, safe=""), app_id=ref.app_id)
    if _is_fal_host(queue_url) or (queue_url is None and _is_fal_host(ref.status_url)):
        from fal_provider._compat import conf

        pattern = conf.get("fal", "dashboard_request_url", fallback=DEFAULT_DASHBOARD_URL)
        return pattern.format(request_id=ref.request_id, app_id=ref.app_id)
    return ref.status_url or ""


def publish_request(context: Context, hook: Any, ref: FalRequestRef, log: Any) -> None:
    """Push the reference and the link before any waiting, so both show while the task is deferred."""
    ti = context["ti"]
    conn_id = getattr(hook, "fal_conn_id", None)
    ti.xcom_push(
        key=REQUEST_XCOM_KEY,
        value={**ref.to_xcom(), **({"conn_id": conn_id} if isinstance(conn_id, str) else {})},
    )
    try:
        queue_url, page_url = hook.settings.queue_url, getattr(hook.settings, "request_page_url", None)
    except Exception:  # a link is a convenience: never fail the task over it
        queue_url, page_url = None, None
    url = request_url(ref, queue_url, page_url if isinstance(page_url, str) else None)
    ti.xcom_push(key=LINK_XCOM_KEY, value=url)
    log.info("fal request %s on %s: %s", ref.request_id, ref.app_id, url)


class FalRequestLink(BaseOperatorLink):
    """Link from the task to the fal request it submitted or waits for."""

    name = "fal request"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(key=LINK_XCOM_KEY, ti_key=ti_key)
        return str(value) if value else ""


# ---------------------------------------------------------------------------
# Reattach: the submitted request remembered across tries
# Remember the submitted request across task tries, so a retry does not pay twice.
#
# Where the reference lives:
#
# * Airflow >= 3.3: ``context["task_state_store"]``, a per-task-instance store that survives retries
#   (AIP-103) and expires by Airflow's own retention. It is the intended home for exactly this.
# * Older Airflow: XComs are cleared at the start of every new try, so they cannot carry a request
#   id to the next try. An Airflow Variable keyed by dag / task / map index survives. It records the
#   run it belongs to, so a new DAG run never reuses it, and that run's first submit overwrites it:
#   one small Variable per task, not one per run. Two runs of the same task waiting at the same time
#   share the Variable; the later submit wins, and the earlier run's retry (if one is needed) then
#   submits afresh instead of reattaching.
#
# The reference is kept until the success is durable, which only Airflow knows: the task returns its
# result before Airflow records the success, and a worker that dies in between (or a terminal state
# Airflow refuses) leads to another try. So it is never cleared on success; the next try of the same
# task instance finds the request already succeeded and fetches its result again, at no cost.
#
# The decision on a new try: reattach when the stored request was submitted with the same inputs
# (fingerprint of app id, path, arguments and options) and is still queued, running or already
# succeeded (its result is paid for); resubmit when the inputs changed, or it failed, was cancelled
# or is unknown to fal.
# ---------------------------------------------------------------------------

log = logging.getLogger(__name__)

STATE_KEY = "fal_request"
VARIABLE_PREFIX = "fal_provider.request."


def submission_fingerprint(app_id: str, path: str, arguments: Mapping[str, Any], options: Any) -> str:
    """A digest of what a submit pays for: a stored request is reused only for the same inputs."""
    if hasattr(options, "model_dump"):
        options = options.model_dump(exclude_none=True)
    material = json.dumps([app_id, path or "", arguments, options], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class StoredRequest:
    """What a try left for the next one: the request and the fingerprint of its inputs.

    ``ref`` is ``None`` for an intent (written just before the POST) that no request id replaced:
    the try died between sending the submit and saving fal's answer, so fal may be running (and
    billing) a request nobody knows the id of; :mod:`~fal_provider.operators._orphans` looks for it.
    """

    ref: FalRequestRef | None
    fingerprint: str | None = None
    intent_at: float | None = None
    input_sha: str | None = None


class TaskSlot:
    """One record kept for a task instance across its tries, whatever the Airflow version: under
    ``key`` in ``task_state_store`` (Airflow >= 3.3), else in a Variable named ``variable_prefix`` +
    a digest of dag / task / map index (see above). Errors are the store's own; callers decide."""

    def __init__(self, context: Any, key: str, variable_prefix: str) -> None:
        self.state = context.get("task_state_store") if AIRFLOW_V_3_3_PLUS else None
        ti = context.get("ti")
        self.run_id = str(getattr(ti, "run_id", None))
        identity = [getattr(ti, "dag_id", None), getattr(ti, "task_id", None), getattr(ti, "map_index", -1)]
        digest = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:40]
        self.key = key
        self.variable_key = variable_prefix + digest

    def get(self) -> Any:
        if self.state is not None:
            return self.state.get(self.key)
        from airflow.sdk import Variable

        return Variable.get(self.variable_key, default=None)

    def set(self, record: dict[str, Any]) -> None:
        if self.state is not None:
            self.state.set(self.key, record)
        else:
            from airflow.sdk import Variable

            Variable.set(self.variable_key, json.dumps(record))


class RequestStore:
    """Read/write the request reference of one task instance, whatever the Airflow version."""

    def __init__(self, context: Any) -> None:
        self.slot = TaskSlot(context, STATE_KEY, VARIABLE_PREFIX)
        self._run_id = self.slot.run_id

    def load(self) -> StoredRequest | None:
        raw = self.slot.get() if self.slot.state is not None else self._variable_get()
        if not raw:
            return None
        raw = loads_if_json(raw)
        record = raw if isinstance(raw, Mapping) else {}
        if "request" not in record:  # written by an older provider version: the bare reference
            record = {"request": raw}
        if record.get("run_id") not in (None, self._run_id):
            log.info(
                "The stored fal request belongs to DAG run %s, not this one; ignoring it", record["run_id"]
            )
            return None
        if record["request"] is None and record.get("intent_at") is not None:
            return StoredRequest(
                None, record.get("fingerprint"), float(record["intent_at"]), record.get("input_sha")
            )
        try:
            ref = FalRequestRef.coerce(record["request"])
        except ValueError:
            log.warning("Ignoring an unreadable stored fal request reference: %r", raw)
            return None
        fingerprint = record.get("fingerprint")
        return StoredRequest(ref, str(fingerprint) if fingerprint else None)

    def save(self, ref: FalRequestRef, fingerprint: str | None = None) -> bool:
        """Remember the request for a later try; best effort, never fails the task.

        It runs right after a paid submit. Failing the task here would leave that request running
        with nobody waiting for it, and the retry would pay again anyway; waiting for it is better,
        and only a later failure of this try loses the reattach (logged).
        """
        record = {"run_id": self._run_id, "request": ref.to_xcom(), "fingerprint": fingerprint}
        return self._write(
            record,
            f"Could not store fal request {ref.request_id.replace('%', '%%')} for reattach on retry (%s: %s); waiting for "
            "it anyway. If this try fails, a retry submits a new request.",
        )

    def save_intent(self, fingerprint: str, input_sha: str, at: float) -> bool:
        """Record, before the POST, that this try is about to pay for a request with these inputs.

        Unlike :meth:`save` (after the POST, when the request is paid for and must be waited for),
        ``False`` here stops the submit: the caller raises
        :class:`~fal_provider.exceptions.FalIntentNotRecorded` before anything is paid.
        """
        record = {
            "run_id": self._run_id,
            "request": None,
            "fingerprint": fingerprint,
            "input_sha": input_sha,
            "intent_at": at,
        }
        return self._write(
            record,
            "Could not record the intent to submit (%s: %s); nothing is submitted by this try",
        )

    def _write(self, record: dict[str, Any], failure: str) -> bool:
        try:
            self.slot.set(record)
        except Exception as err:
            log.warning(failure, type(err).__name__, err)
            return False
        return True

    def _variable_get(self) -> Any:
        try:
            return self.slot.get()
        except Exception as err:
            log.warning("Could not read the stored fal request reference: %s", err)
            return None


def reattach_status(hook: Any, stored: StoredRequest, fingerprint: str | None) -> Status | None:
    """The stored request's status when it is worth waiting for, ``None`` when it must be resubmitted.

    The status is returned so the caller can go on from it without asking fal a second time.
    Transient errors while checking propagate: guessing "resubmit" could pay twice, and the
    task's own retry will ask again.
    """
    ref = stored.ref
    if ref is None:
        return None
    if fingerprint and stored.fingerprint and stored.fingerprint != fingerprint:
        log.info(
            "Stored fal request %s was submitted with other inputs (app, path, arguments or options "
            "changed since); submitting a new one",
            ref.request_id,
        )
        return None
    try:
        status = hook.get_status(ref)
    except FalNotFoundError:
        log.info("Stored fal request %s is unknown to fal; submitting a new one", ref.request_id)
        return None
    if isinstance(status, CompletedStatus) and status.failed:
        log.info("Stored fal request %s failed (%s); submitting a new one", ref.request_id, status.error_type)
        return None
    log.info("Reattaching to fal request %s (%s) from a previous try", ref.request_id, status.status)
    return status


# ---------------------------------------------------------------------------
# The task log of streaming and realtime operators
# What the streaming and realtime operators write to the task log: bounded, and naming the app.
#
# A chatty stream or a large batch must not bury the log, and an error must say which app broke.
# ---------------------------------------------------------------------------


class _InfoLog(Protocol):
    def info(self, event: Any, *args: Any, **kw: Any) -> Any: ...


class RateLimitedLog:
    """Writes at most one progress line per ``interval`` seconds.

    A chatty stream (an LLM sends one event per token) would otherwise bury the task log. Lines
    that are held back are counted, and the next line that gets through says how many were
    skipped, so the log still tells the whole story. ``interval <= 0`` logs every line.
    """

    def __init__(
        self, log: _InfoLog, interval: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._interval = max(0.0, float(interval))
        self._clock = clock
        self._last: float | None = None
        self.skipped = 0
        self.written = 0

    def offer(self, line: Callable[[], str], *, force: bool = False) -> bool:
        """Log ``line()`` unless a line went out less than ``interval`` ago; ``line`` is lazy.

        ``force`` is for lines that must never be swallowed (a reconnect, a warning).
        """
        now = self._clock()
        if not force and self._last is not None and now - self._last < self._interval:
            self.skipped += 1
            return False
        text = line()
        if self.skipped:
            text = f"{text} (+{self.skipped} earlier update(s) not shown)"
        self._log.info("%s", text)
        self._last = now
        self.skipped = 0
        self.written += 1
        return True


def name_the_app(err: FalError, app_id: str, doing: str) -> FalError:
    """Return ``err`` with a message that names the app, keeping its class (and so its retry verdict).

    The hook's messages usually name the app already; when one does not, the task log would say
    what broke but not where, which is the first thing a user needs with several fal tasks.
    """
    if app_id in str(err):
        return err
    message = f"{doing} {app_id} failed: {err}"
    clone = type(err).__new__(type(err))
    Exception.__init__(clone, message)
    clone.__dict__.update(err.__dict__)
    clone.message = message
    return clone


# ---------------------------------------------------------------------------
# Money: what a submitting task spends
# Before each submit (:meth:`CostGuard.before_submit`) the request's estimated cost (fal's
# historical price per call of the endpoint, else the last cost this process observed for it) is
# checked against ``max_cost`` (this task, across all its tries) and reserved in a named budget
# (:mod:`fal_provider.budgets`); past a limit the task fails with a permanent
# :class:`~fal_provider.exceptions.FalBudgetExceeded` and nothing is submitted. When no estimate can
# be had, the check lets the request through with a warning, unless ``strict_budget=True``. After
# the result, :func:`record_cost` logs the record, pushes it to XCom under :data:`COST_XCOM_KEY`
# (the return value is unchanged), counts it in Airflow metrics, adds it to the task's spend and
# settles the named budget. The spend lives in the same per-task-instance slot as the reattach
# reference (:class:`TaskSlot`), keyed by request id, so a retry continues the count and a request
# fetched again by a later try is counted once.
# ---------------------------------------------------------------------------

#: The XCom key of a task's cost record (one per request the try fetched).
COST_XCOM_KEY = "fal_cost"
SPEND_KEY = "fal_spend"
SPEND_VARIABLE_PREFIX = "fal_provider.spend."
BUDGET_SCOPES = ("global", "dag_run")
#: Cost last observed per endpoint in this process: the estimate when fal has no historical price.
_LAST_COST: dict[str, float] = {}
_WARNED: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


@dataclass(frozen=True)
class CostSettings:
    """The money parameters of a submitting operator, checked when it is built."""

    tags: dict[str, str]
    max_cost: float | None = None
    budget: str | None = None
    budget_limit: float | None = None
    budget_scope: str = "global"
    strict_budget: bool = False

    @classmethod
    def build(
        cls,
        *,
        tags: Any = None,
        max_cost: Any = None,
        budget: Any = None,
        budget_limit: Any = None,
        budget_scope: Any = "global",
        strict_budget: Any = False,
    ) -> CostSettings:
        if budget_scope not in BUDGET_SCOPES:
            raise FalInputError(f"budget_scope must be one of {BUDGET_SCOPES}, got {budget_scope!r}")
        if not isinstance(strict_budget, bool):
            raise FalInputError(f"strict_budget must be True or False, got {strict_budget!r}")
        limit = check_max_cost(budget_limit, "budget_limit")
        name = check_budget_name(budget)
        if limit is not None and name is None:
            raise FalInputError("budget_limit needs budget='<name>' (the budget it limits)")
        return cls(check_tags(tags), check_max_cost(max_cost), name, limit, str(budget_scope), strict_budget)

    @property
    def limited(self) -> bool:
        return self.max_cost is not None or self.budget is not None


class SpendStore:
    """The task instance's requests and their cost, kept across tries (see the section above)."""

    def __init__(self, context: Any) -> None:
        self.slot = TaskSlot(context, SPEND_KEY, SPEND_VARIABLE_PREFIX)

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = loads_if_json(self.slot.get())
        except Exception as err:
            log.warning("Could not read this task's fal spend (%s); counting from zero", err)
            return {}
        if not isinstance(raw, Mapping) or raw.get("run_id") != self.slot.run_id:
            return {}
        requests = raw.get("requests")
        return dict(requests) if isinstance(requests, Mapping) else {}

    def save(self, requests: Mapping[str, Mapping[str, Any]]) -> None:
        try:
            self.slot.set({"run_id": self.slot.run_id, "requests": dict(requests)})
        except Exception as err:
            log.warning("Could not store this task's fal spend (%s); a retry may count it again", err)

    def update(self, request_id: str, **fields: Any) -> dict[str, Any]:
        requests = self.load()
        entry = {**requests.get(request_id, {}), **fields}
        requests[request_id] = entry
        self.save(requests)
        return entry


def spent_of(entries: Mapping[str, Mapping[str, Any]]) -> float:
    """What the task's requests cost so far: the actual cost, else the estimate reserved for it."""
    return money(
        math.fsum(
            float(entry["cost"] if entry.get("cost") is not None else entry.get("estimate") or 0.0)
            for entry in entries.values()
        )
    )


@dataclass(frozen=True)
class Reservation:
    budget: str | None
    amount: float


class CostGuard:
    """The before/after-submit half of money for one try of one submitting task."""

    def __init__(self, settings: CostSettings, hook: Any, context: Any) -> None:
        self.settings = settings
        self.hook = hook
        self.context = context
        ti = context["ti"]
        self.tags = request_tags(ti.dag_id, ti.task_id, settings.tags)
        self.budget_key = None
        self.limit = 0.0
        if settings.budget is not None:
            # Configuration mistakes fail here, before the estimate or anything else goes out.
            self.limit = budgets.budget_limit(settings.budget, settings.budget_limit)
            budgets.database_url()
            scope = "" if settings.budget_scope == "global" else f"@{ti.dag_id}/{ti.run_id}"
            self.budget_key = settings.budget + scope

    def headers(self) -> dict[str, str]:
        return {TAGS_HEADER: tags_header(self.tags)}

    def estimate(self, endpoint: str) -> float | None:
        """fal's historical cost of one call, else the last cost seen here, else ``None``."""
        try:
            return float(
                self.hook.estimate_cost({endpoint: 1}, estimate_type="historical_api_price").total_cost
            )
        except Exception as err:
            _warn_once(f"estimate:{endpoint}", "No fal cost estimate for %s (%s)", endpoint, err)
        return _LAST_COST.get(endpoint)

    def before_submit(self, endpoint: str) -> Reservation:
        """Check ``max_cost`` and reserve in the named budget; raise ``FalBudgetExceeded`` past one."""
        if not self.settings.limited:
            return Reservation(None, 0.0)
        needed = self.estimate(endpoint)
        if needed is None:
            if self.settings.strict_budget:
                raise FalPermanentError(
                    f"strict_budget: the cost of a request to {endpoint} cannot be estimated (no fal price "
                    "estimate and none observed in this process), so it is not submitted. Pass "
                    "strict_budget=False to let unpriced requests through."
                )
            log.warning(
                "The cost of %s cannot be estimated; budget checks count it as 0 until its result", endpoint
            )
            needed = 0.0
        if self.settings.max_cost is not None:
            spent = spent_of(SpendStore(self.context).load())
            if spent + needed > self.settings.max_cost + budgets.EPSILON:
                raise budgets.budget_exceeded(
                    "max_cost of this task",
                    spent,
                    0.0,
                    needed,
                    self.settings.max_cost,
                    "raise max_cost on the task",
                )
        if self.budget_key is not None:
            budgets.ledger().reserve(self.budget_key, needed, self.limit)
        return Reservation(self.budget_key, needed)

    def submitted(self, request_id: str, reservation: Reservation, *, settle: bool = False) -> dict[str, Any]:
        """Remember the request with its reservation, so whichever try fetches the result settles it;
        returns the entry (the caller keeps it for a result fetched in this same process).

        ``settle``: the task never sees the result (submit only), so the estimate is what it spent.
        Tasks without limits store nothing (no extra calls).
        """
        fields: dict[str, Any] = {"estimate": reservation.amount, "budget": reservation.budget}
        fields["submitted_at"] = time.time()
        if settle:
            fields["cost"] = reservation.amount
            if reservation.budget is not None:
                budgets.ledger().settle(reservation.budget, reservation.amount, reservation.amount)
        if self.settings.limited:
            SpendStore(self.context).update(request_id, **fields)
        return {request_id: fields}

    def not_submitted(self, reservation: Reservation, err: BaseException) -> None:
        """Release the reservation of a submit fal refused; keep it when fal may have accepted it."""
        if reservation.budget is None or not isinstance(err, FalPermanentError):
            return
        budgets.ledger().settle(reservation.budget, reservation.amount, 0.0)


def price_of(hook: Any, endpoint: str) -> tuple[Any, str | None]:
    """The cached list price of ``endpoint``, or ``None`` and why (never raises)."""
    try:
        price = hook.get_pricing([endpoint]).get(endpoint)
    except Exception as err:
        _warn_once(
            f"price:{endpoint}", "No fal price for %s (%s); its cost is reported as unknown", endpoint, err
        )
        return None, f"pricing unavailable ({type(err).__name__})"
    return price, None if price is not None else "fal lists no price for this endpoint"


def record_cost(
    op: Any,
    context: Any,
    *,
    app_id: str,
    request_id: str,
    units: float | None,
    metrics: Mapping[str, Any] | None = None,
) -> CostRecord:
    """Price a finished request, log it, push it to XCom, emit metrics, settle budgets. Never raises
    for a pricing problem: a result is worth more than its price tag."""
    hook = op.hook  # type: ignore[attr-defined]
    endpoint = endpoint_of(app_id, getattr(op, "path", "") or "")
    price, reason = price_of(hook, endpoint) if units is not None else (None, None)
    record = cost_record(endpoint, request_id, units, price, reason=reason)
    op.log.info("fal cost: %s", record.describe())
    if record.cost is not None:
        _LAST_COST[endpoint] = record.cost
    _push(context, record)
    entry = _spend_entry(op, context, request_id)
    if entry is not None and entry.get("cost") is None:
        _settle(context, request_id, entry, record, stored=_limited(op))
    emit_metrics(record, "success", metrics, entry)
    return record


def _push(context: Any, record: CostRecord) -> None:
    """The record under ``fal_cost`` (a try fetches one request; a later try's push replaces it)."""
    try:
        context["ti"].xcom_push(key=COST_XCOM_KEY, value=record.to_xcom())
    except Exception as err:
        log.warning("Could not push the fal cost record to XCom: %s", err)


def _limited(op: Any) -> bool:
    settings = getattr(op, "cost_settings", None)
    return bool(settings is not None and settings.limited)


def _spend_entry(op: Any, context: Any, request_id: str) -> dict[str, Any] | None:
    """The submit's entry: kept on the operator when this process submitted, else (a resumed or
    later try) from the task's spend store."""
    entry = (getattr(op, "fal_spend", None) or {}).get(request_id)
    if entry is None and _limited(op):
        entry = SpendStore(context).load().get(request_id)
    return entry


def _settle(
    context: Any, request_id: str, entry: Mapping[str, Any], record: CostRecord, *, stored: bool
) -> None:
    actual = record.cost if record.cost is not None else float(entry.get("estimate") or 0.0)
    if stored:
        SpendStore(context).update(request_id, cost=actual)
    name = entry.get("budget")
    if name:
        state = budgets.ledger().settle(str(name), float(entry.get("estimate") or 0.0), actual)
        log.info("fal budget %s: spent %.10g USD, reserved %.10g USD", name, state.spent, state.reserved)


def emit_metrics(
    record: CostRecord, outcome: str, metrics: Mapping[str, Any] | None, entry: Mapping[str, Any] | None
) -> None:
    """Airflow metrics (StatsD/OTel, as configured), tagged only by app id and outcome."""
    stats = _stats()
    if stats is None:
        return
    tags = {"app_id": record.app_id, "outcome": outcome}
    try:
        stats.incr("fal.requests", tags=tags)
        if record.units is not None:
            stats.gauge("fal.request.billable_units", record.units, tags=tags)
        if record.cost is not None:
            stats.gauge("fal.request.cost", record.cost, tags=tags)
        inference = (metrics or {}).get("inference_time")
        if isinstance(inference, int | float):
            stats.timing("fal.request.inference_time", timedelta(seconds=inference), tags=tags)
            submitted = (entry or {}).get("submitted_at")
            if isinstance(submitted, int | float):
                queued = max(0.0, time.time() - submitted - inference)
                stats.timing("fal.request.queue_time", timedelta(seconds=queued), tags=tags)
    except Exception as err:  # metrics never fail a task
        _warn_once("metrics", "Could not emit fal metrics: %s", err)


def _stats() -> Any:
    try:
        from airflow.providers.common.compat.sdk import Stats
    except ImportError:
        try:
            from airflow.sdk.observability.stats import Stats
        except ImportError:
            return None
    return Stats
