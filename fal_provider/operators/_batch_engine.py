"""The batch engine: a sliding window of fal requests on one event loop, journalled item by item.

At most ``max_in_flight`` items are between their POST and their result at any time. Each item is
one coroutine: intent -> submit -> request id -> wait (status stream or polling) -> result -> output
line, with its own attempts: a transient failure (429 with ``Retry-After``, ingress 5xx, a runner
error, ``X-Fal-Retryable: true``) is tried again after a backoff, up to ``max_item_attempts``; a
permanent one (422, content policy) is recorded once. The window means the queue on fal's side
never holds more than the window, so every result is fetched seconds after it completes, well
inside fal's retention (1 h, 6 min for results >= 10 KB), and a kill has at most the window to
cancel.

A deferrable batch runs the engine in rounds (``park=True``): an item whose request is submitted,
or reattached but not among the ``ready`` request ids a trigger saw finish, is parked instead of
waited for; parked items count towards the window, and the round ends once the window holds only
parked items (or no input is left). The operator then defers on the parked requests; the next
round reattaches them from the journal, fetches the finished ones and tops the window up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fal_provider.exceptions import (
    FalError,
    FalNotFoundError,
    FalPermanentError,
    FalRequestCancelled,
    error_from_completed,
)
from fal_provider.models import CompletedStatus, FalRequestRef
from fal_provider.operators._batch_budget import BatchBudget
from fal_provider.operators._batch_cache import BatchCache
from fal_provider.operators._batch_history import arguments_hash, find_orphans, recover_output, recovered
from fal_provider.operators._batch_inputs import BatchItem
from fal_provider.operators._batch_journal import Journal, JournalState, OpenItem
from fal_provider.operators._batch_store import Part
from fal_provider.waiting import AdaptiveInterval, ErrorTolerance, is_transient

#: The outcome of an input a budget stop left unsent (never POSTed, nothing paid).
NOT_SUBMITTED = "not_submitted"


@dataclass(frozen=True)
class EngineSettings:
    app_id: str
    max_in_flight: int
    max_item_attempts: int
    wait_mode: str
    poll_interval: float
    max_poll_interval: float
    retry_min_wait: float
    retry_max_wait: float
    progress_interval: float
    on_orphan: str
    max_consecutive_errors: int = 5
    download_media: bool = False
    #: A deferrable round: park what is still running instead of waiting for it (see the module doc).
    park: bool = False


@dataclass
class Outputs:
    """This try's output parts: one line per finished item, and the inputs of failed ones."""

    results: Part
    failed: Part
    media: Callable[[int, Any], Any] | None = None


class _Failure(Exception):
    """An item's attempt ended without a result; ``retryable`` decides whether another follows."""

    def __init__(self, err: BaseException, *, retryable: bool, outcome: str = "failed") -> None:
        super().__init__(str(err))
        self.err = err
        self.retryable = retryable
        self.outcome = outcome


def _error_fields(err: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {"error": str(err)[:2000], "error_class": type(err).__name__}
    if isinstance(err, FalError):
        fields.update(error_type=err.error_type, http_status=err.http_status)
    return fields


@dataclass
class Progress:
    total: int
    skipped: int
    started: float = field(default_factory=time.monotonic)
    counts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    last_log: float = field(default_factory=time.monotonic)
    #: The estimated spend so far, when the task has a spending limit (the budget's running sum).
    spend: Callable[[], float] | None = None

    def line(self) -> str:
        done = sum(self.counts.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        left = self.total - self.skipped - done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        failed = done - self.counts["success"]
        cost = "" if self.spend is None else f", ~{self.spend():.4g} USD spent"
        return (
            f"fal batch: {done + self.skipped}/{self.total} done ({self.skipped} from earlier tries), "
            f"{self.in_flight} in flight, {failed} failed, {rate:.1f} items/s, ETA {eta}{cost}"
        )


class BatchEngine:
    """Runs the items of one try; ``halt()`` (from any thread) stops it, optionally cancelling."""

    def __init__(
        self,
        hook: Any,
        settings: EngineSettings,
        *,
        items: Iterator[BatchItem],
        state: JournalState,
        journal: Journal,
        outputs: Outputs,
        progress: Progress,
        log: logging.Logger | Any,
        budget: BatchBudget | None = None,
        cache: BatchCache | None = None,
        ready: frozenset[str] = frozenset(),
    ) -> None:
        self.hook = hook
        #: Request ids a trigger saw finish: a round waits for (and fetches) only these.
        self.ready = ready
        #: Items of this round whose requests still run, for the trigger to wait on.
        self.parked: dict[int, FalRequestRef] = {}
        self.budget = budget
        self.cache = cache
        self.settings = settings
        self.items = items
        self.state = state
        self.journal = journal
        self.outputs = outputs
        self.progress = progress
        self.log = log
        self.in_flight: dict[int, FalRequestRef] = {}
        self.http_calls: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._halted = False
        self._cancel_on_halt = False
        self._budget_logged = False

    # -- control -------------------------------------------------------------------------------

    def halt(self, *, cancel: bool) -> None:
        """Stop submitting and waiting. ``cancel``: also cancel every request in flight (a user's
        kill); otherwise they keep running and a retry reattaches to them (a shutdown)."""
        self._cancel_on_halt = self._cancel_on_halt or cancel
        self._halted = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._cancel_tasks)

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()

    @property
    def halted(self) -> bool:
        return self._halted

    # -- the window ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._adopt_orphans()
        ticker = asyncio.ensure_future(self._report_progress())
        try:
            for item in self.items:
                if self._halted:
                    break
                if item.index in self.state.finished:
                    continue
                if self.budget is not None and self.budget.stopped is not None:
                    self._not_submitted(item, self.budget.stopped)
                    continue
                while self._window_full() and self._tasks and not self._halted:
                    await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                if self._halted or self._window_full():
                    break  # halted, or (a round) the window holds only parked requests
                task = asyncio.ensure_future(self._process(item, self.state.open.pop(item.index, None)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            ticker.cancel()
            if self.budget is not None:
                await asyncio.to_thread(self.budget.settle)
            if self._cancel_on_halt:
                await self._cancel_in_flight()
            self.journal.close()
            self.outputs.results.close()
            self.outputs.failed.close()

    def _window_full(self) -> bool:
        return len(self._tasks) + len(self.parked) >= self.settings.max_in_flight

    async def _adopt_orphans(self) -> None:
        """Orphans whose POST fal accepted get their request id back from fal's request history."""
        orphans = {
            index: (item.arguments_hash, item.intent_at)
            for index, item in self.state.open.items()
            if item.request_id is None and item.arguments_hash
        }
        known = {item.request_id for item in self.state.open.values() if item.request_id}
        adopted = await find_orphans(self.hook, self.settings.app_id, orphans, known, self.log)
        for index, request_id in adopted.items():
            item = self.state.open[index]
            item.request_id = request_id
            self.journal.adopted(index, item.attempt, request_id)
        if orphans:
            self.log.info(
                "fal batch: %d items were submitted by a try that died before recording the request id; "
                "%d found in fal's request history and reattached, %d follow on_orphan=%r",
                len(orphans),
                len(adopted),
                len(orphans) - len(adopted),
                self.settings.on_orphan,
            )

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            self.log.info(self.progress.line())

    async def _cancel_in_flight(self) -> None:
        refs = dict(self.in_flight)
        if refs:
            self.log.warning("Cancelling %d fal requests in flight (the task was killed)", len(refs))

        async def cancel(index: int, ref: FalRequestRef) -> None:
            try:
                self.http_calls["cancel"] += 1
                await self.hook.acancel(ref)
            except Exception as err:
                self.log.warning("Could not cancel fal request %s: %s", ref.request_id, err)
            self.journal.released(index)

        await asyncio.gather(*(cancel(index, ref) for index, ref in refs.items()))

    # -- one item ------------------------------------------------------------------------------

    async def _process(self, item: BatchItem, earlier: OpenItem | None) -> None:
        self.progress.in_flight += 1
        try:
            await self._attempts(item, earlier)
        finally:
            self.progress.in_flight -= 1

    async def _attempts(self, item: BatchItem, earlier: OpenItem | None) -> None:
        if earlier is None and await self._cached(item):
            return
        attempt, ref = self._resume_point(item, earlier)
        if attempt < 0:
            self._record_failure(item, _Failure(_orphan_error(item), retryable=False, outcome="orphaned"))
            return
        while True:
            try:
                await self._one_attempt(item, attempt, ref)
                return
            except _Failure as failure:
                self.in_flight.pop(item.index, None)
                if ref is not None and isinstance(failure.err, FalRequestCancelled):
                    # Left running by an earlier round or try and cancelled since (a user's kill
                    # of the deferred task cancels from the trigger, which cannot write the
                    # journal): no result was paid for and the input is not at fault, so it is
                    # sent again, as a kill on the worker releases its window for the next try.
                    self.log.info(
                        "fal batch item %d: request %s was cancelled; submitting again",
                        item.index,
                        ref.request_id,
                    )
                    ref = None
                    continue
                if not failure.retryable or attempt >= self.settings.max_item_attempts:
                    self._record_failure(item, failure, attempts=attempt)
                    return
                delay = self._backoff(attempt, failure.err)
                self.log.info(
                    "fal batch item %d: attempt %d failed (%s); retrying in %.1fs",
                    item.index,
                    attempt,
                    failure.err,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt, ref = attempt + 1, None

    def _resume_point(self, item: BatchItem, earlier: OpenItem | None) -> tuple[int, FalRequestRef | None]:
        """Where an item an earlier try left open starts again (``-1``: an orphan to fail)."""
        if earlier is None or earlier.fingerprint != item.fingerprint:
            return 1, None
        if earlier.request_id is not None:
            self.log.info("fal batch item %d: reattaching to request %s", item.index, earlier.request_id)
            return earlier.attempt, self.hook.request_ref(self.settings.app_id, earlier.request_id)
        # Only an intent: the POST may or may not have reached fal before the worker died.
        if self.settings.on_orphan == "fail":
            return -1, None
        return earlier.attempt, None

    async def _cached(self, item: BatchItem) -> bool:
        """A cache hit: its output line is written and no request is made (nothing journalled as
        sent, nothing counted against a budget)."""
        if self.cache is None:
            return False
        entry = await self.cache.lookup(item.arguments, item.path)
        if entry is None:
            return False
        self.outputs.results.write(
            {
                "index": item.index,
                "status": "success",
                "request_id": entry.request_id,
                "cached": True,
                "attempts": 0,
                "meta": item.meta,
                "result": entry.result,
            }
        )
        self.outputs.results.sync()
        self.journal.done(item.index, "success")
        self.progress.counts["success"] += 1
        return True

    async def _one_attempt(self, item: BatchItem, attempt: int, ref: FalRequestRef | None) -> None:
        if ref is None:
            ref = await self._submit(item, attempt)
        self.in_flight[item.index] = ref
        if self.settings.park and ref.request_id not in self.ready:
            self.parked[item.index] = ref
            return
        status = await self._wait(ref)
        if status.failed:
            raise self._classified(await self._failure_of(ref, status))
        result = await self._result(ref)
        if self.cache is not None:
            estimate = (
                None if self.budget is None else self.budget.estimate_of(self.settings.app_id, item.path)
            )
            result = await self.cache.store(item.arguments, item.path, ref.request_id, result, estimate)
        if self.outputs.media is not None:
            result = await asyncio.to_thread(self.outputs.media, item.index, result)
        self.outputs.results.write(
            {
                "index": item.index,
                "status": "success",
                "request_id": ref.request_id,
                "attempts": attempt,
                "meta": item.meta,
                "result": result,
            }
        )
        self.outputs.results.sync()
        self.in_flight.pop(item.index, None)
        self.journal.done(item.index, "success")
        self.progress.counts["success"] += 1

    async def _submit(self, item: BatchItem, attempt: int) -> FalRequestRef:
        estimate = None
        if self.budget is not None:
            try:
                estimate = await self.budget.reserve(self.settings.app_id, item.path)
            except FalPermanentError as err:  # a limit, or strict_budget without a price
                if self.budget.stopped is err and not self._budget_logged:
                    self._budget_logged = True
                    self.log.warning("fal batch: %s; submitting no more items", err)
                raise _Failure(err, retryable=False, outcome=NOT_SUBMITTED) from None
        self.journal.intent(item.index, attempt, item.fingerprint, arguments_hash(item.arguments), estimate)
        self.http_calls["submit"] += 1
        post = asyncio.ensure_future(
            self.hook.asubmit(self.settings.app_id, item.arguments, path=item.path, options=item.options)
        )
        try:
            # Shielded: a halt must not lose the answer of a POST fal may already have accepted.
            ref = await asyncio.shield(post)
        except asyncio.CancelledError:
            ref = await _answer_of(post)
            if ref is not None:
                self.journal.submitted(item.index, attempt, ref.request_id)
                self.in_flight[item.index] = ref
            raise
        except FalError as err:
            raise self._classified(err) from None
        self.journal.submitted(item.index, attempt, ref.request_id)
        return ref

    def _classified(self, err: BaseException) -> _Failure:
        return _Failure(err, retryable=is_transient(err))

    async def _failure_of(self, ref: FalRequestRef, status: CompletedStatus) -> BaseException:
        """fal's own error answer from the result endpoint, else the status' error fields."""
        try:
            self.http_calls["result"] += 1
            await self.hook.aget_result(ref)
        except FalError as err:
            return err
        return error_from_completed(
            status.error, status.error_type, app_id=ref.app_id, request_id=ref.request_id
        )

    async def _result(self, ref: FalRequestRef) -> Any:
        self.http_calls["result"] += 1
        try:
            return await self.hook.aget_result(ref)
        except FalNotFoundError as err:
            # Completed, but fal no longer has the result: retention passed (or the id is unknown).
            output = await recover_output(self.hook, self.settings.app_id, ref.request_id, self.log)
            if recovered(output):
                self.log.info(
                    "fal request %s: result expired, recovered from request history", ref.request_id
                )
                return output
            raise _Failure(err, retryable=False, outcome="expired") from None
        except FalError as err:
            raise self._classified(err) from None

    # -- waiting -------------------------------------------------------------------------------

    async def _wait(self, ref: FalRequestRef) -> CompletedStatus:
        if self.settings.wait_mode == "stream":
            status = await self._follow_stream(ref)
            if status is not None:
                return status
        return await self._poll(ref)

    async def _follow_stream(self, ref: FalRequestRef) -> CompletedStatus | None:
        """The status stream until COMPLETED; ``None`` when it broke (polling takes over)."""
        self.http_calls["status_stream"] += 1
        try:
            async for status in self.hook.aiter_status(ref):
                if isinstance(status, CompletedStatus):
                    return status
        except FalNotFoundError as err:
            raise _Failure(err, retryable=False, outcome="expired") from None
        except Exception as err:
            if not is_transient(err):
                raise _Failure(err, retryable=False) from None
            self.log.info("Status stream of %s broke (%s); polling instead", ref.request_id, err)
        return None

    async def _poll(self, ref: FalRequestRef) -> CompletedStatus:
        interval = AdaptiveInterval(self.settings.poll_interval, self.settings.max_poll_interval)
        tolerance = ErrorTolerance(self.settings.max_consecutive_errors)
        while True:
            self.http_calls["status"] += 1
            try:
                status = await self.hook.aget_status(ref)
            except FalNotFoundError as err:
                raise _Failure(err, retryable=False, outcome="expired") from None
            except Exception as err:
                if not tolerance.tolerates(err):
                    raise _Failure(err, retryable=False) from None
                await asyncio.sleep(interval.next(None))
                continue
            tolerance.succeeded()
            if isinstance(status, CompletedStatus):
                return status
            await asyncio.sleep(interval.next(status))

    # -- outcomes ------------------------------------------------------------------------------

    def _backoff(self, attempt: int, err: BaseException) -> float:
        retry_after = getattr(err, "retry_after", None)
        if retry_after:
            return min(float(retry_after), self.settings.retry_max_wait)
        base = min(self.settings.retry_min_wait * 2 ** (attempt - 1), self.settings.retry_max_wait)
        return base * random.uniform(0.5, 1.5)

    def _not_submitted(self, item: BatchItem, err: BaseException) -> None:
        """An input left unsent by a budget stop: recorded, and sent by a later try that fits."""
        self._record_failure(item, _Failure(err, retryable=False, outcome=NOT_SUBMITTED), attempts=0)

    def _record_failure(self, item: BatchItem, failure: _Failure, attempts: int | None = None) -> None:
        fields = _error_fields(failure.err)
        retryable = failure.retryable
        line = {"index": item.index, "status": failure.outcome, "attempts": attempts, "meta": item.meta}
        line.update(fields)
        line["request_id"] = getattr(failure.err, "request_id", None)
        if retryable:
            line["retryable"] = True
        self.outputs.results.write(line)
        self.outputs.failed.write({**item.spec, "meta": {"index": item.index, **fields}})
        self.outputs.results.sync()
        self.outputs.failed.sync()
        # Not sent is not final: the journal lets a later try (a higher limit) submit it.
        self.journal.done(
            item.index, failure.outcome, retryable=retryable or failure.outcome == NOT_SUBMITTED
        )
        self.progress.counts[failure.outcome] += 1
        if failure.outcome == NOT_SUBMITTED:
            return
        self.log.warning("fal batch item %d: %s (%s)", item.index, failure.outcome, fields["error"][:300])


def _orphan_error(item: BatchItem) -> FalError:
    return FalError(
        f"Batch input {item.index}: an earlier try recorded the intent to submit it but no request id "
        "(the worker died around the POST); on_orphan='fail' records it instead of paying again"
    )


async def _answer_of(post: asyncio.Future[FalRequestRef]) -> FalRequestRef | None:
    """The request a shielded POST ended with, or ``None`` if it failed."""
    try:
        return await post
    except Exception:
        return None
