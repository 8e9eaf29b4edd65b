"""Bulk inference: one task drives thousands of fal requests (:class:`FalBatchOperator`).

Mapping ``FalInferenceOperator`` over 10,000 inputs costs 10,000 scheduled tasks and worker starts
and shares one try counter; fal has no batch API, counts only running requests against the
account's concurrency, and keeps a queue result for 1 hour (6 minutes when >= 10 KB). So one task
keeps a sliding window of requests in flight on one event loop, fetches each result as soon as its
request completes, and writes it to object storage at once, journalling every item so a retry, a
clear or a killed worker resumes without paying twice (see ``_batch_journal``). XCom only gets a
small manifest.

Inputs are validated whole before the first POST (a bad item fails the task naming its index).
The wait is on the worker by default. With ``deferrable=True`` the task runs in rounds: a round
fetches what has finished and tops the window up, then defers on the requests still running
(:class:`~fal_provider.triggers.batch.FalBatchTrigger`) until a share of them has finished; the
journal carries everything from one round to the next, as it does from one try to the next.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fal_provider.exceptions import FalBatchFailed, FalBatchIncomplete, FalInputError
from fal_provider.hooks.platform import money
from fal_provider.models import FalRequestRef, check_number, is_templated
from fal_provider.operators._batch_budget import BatchBudget
from fal_provider.operators._batch_cache import BatchCache
from fal_provider.operators._batch_engine import BatchEngine, EngineSettings, Outputs, Progress
from fal_provider.operators._batch_inputs import BatchInputError, iter_items, iter_raw, validate_all
from fal_provider.operators._batch_journal import Journal, load_state
from fal_provider.operators._batch_output import assemble
from fal_provider.operators._batch_store import Part, batch_folder, check_writable, dumps
from fal_provider.operators._caching import open_cache
from fal_provider.operators.fal import FalBaseOperator, check_submit_params, merge_options
from fal_provider.operators.lifecycle import CostSettings, WorkerShutdown, run_guarded
from fal_provider.triggers.batch import FalBatchTrigger
from fal_provider.waiting import error_from_event, validate_event

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "FalBatchOperator", "iter_batch_results"]

#: Requests submitted and not yet finished. fal runs 2-40 requests at once per account (more wait
#: IN_QUEUE, unbilled); 32 keeps a 16-slot account busy with a queue behind each slot, while a
#: kill has at most 32 requests to cancel. Set it to about twice your account's limit.
DEFAULT_MAX_IN_FLIGHT = 32
BATCH_WAIT_MODES = ("stream", "poll")
#: Where a deferrable task that computes its inputs keeps them between rounds (see ``freeze_inputs``).
FROZEN_INPUTS = "inputs.jsonl"
ORPHAN_POLICIES = ("resubmit", "fail")


@dataclass(frozen=True)
class _Window:
    """What the shutdown guard is told is being waited for: the requests of the window."""

    refs: dict[int, FalRequestRef]

    @property
    def request_id(self) -> str:
        return f"{len(self.refs)} batch requests"


def _storage_path(value: Any, name: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    if isinstance(value, ObjectStoragePath):
        return value
    if isinstance(value, str) and value.strip():
        return ObjectStoragePath(value)
    raise FalInputError(f"{name} must be an ObjectStoragePath or a URI string, got {type(value).__name__}")


def _coerce_inputs(inputs: Any) -> Any:
    """A rendered input: a list, a JSONL path (ObjectStoragePath or URI), or a JSON list string."""
    if isinstance(inputs, str):
        try:
            parsed = json.loads(inputs)
        except ValueError:
            return _storage_path(inputs, "inputs")
        if not isinstance(parsed, list):
            raise BatchInputError(f"inputs rendered to JSON {type(parsed).__name__}, not a list of objects")
        return parsed
    return inputs


def _known_later(inputs: Any) -> bool:
    """An XComArg, a template, a storage path or the decorator's placeholder: checked in execute."""
    from airflow.sdk.definitions._internal.types import SetDuringExecution

    return is_templated(inputs) or hasattr(inputs, "open") or isinstance(inputs, SetDuringExecution)


def _map_index(ti: Any) -> int:
    value = getattr(ti, "map_index", None)
    return -1 if value is None else int(value)


class FalBatchOperator(FalBaseOperator):
    """Run one fal model over many inputs in one task; results stream to ``output_path``.

    :param app_id: the fal endpoint (``owner/app[/path]``).
    :param inputs: a list of argument dicts (or items ``{"arguments", "path", "options", "meta"}``),
        an XComArg resolving to one, or an ObjectStoragePath / URI of a JSONL file (read as a stream).
    :param output_path: folder (ObjectStoragePath or URI) for the journal and outputs; each DAG run
        and task gets its own sub-folder ``<run_id>/<task_id>``, so a retry resumes and a new run
        starts fresh.
    :param path: sub-path of the endpoint for every item (an item's own ``path`` wins).
    :param options: request options for every item (``priority``, ``start_timeout``, ... as on
        ``FalInferenceOperator``); an item's own ``options`` are merged over them.
    :param max_in_flight: requests submitted and not yet finished (default
        :data:`DEFAULT_MAX_IN_FLIGHT`; about twice the account's concurrency limit).
    :param max_item_attempts: tries per item for transient failures (429, 5xx, runner errors).
    :param min_success_ratio: the task fails when fewer items than this share succeed (default 1.0).
    :param wait_mode: ``stream`` (status SSE, 3 HTTP calls per item, polling if it breaks) or ``poll``.
    :param on_orphan: an item an earlier try announced but has no request id for: ``resubmit``
        (default; it may run twice if the lost POST had reached fal) or ``fail`` (record it).
    :param download_media: copy each result's media under ``<folder>/media/<index>/``.
    :param progress_interval: seconds between progress lines in the task log.
    :param cancel_on_kill: cancel every request in flight when a user kills or marks the task.
    :param deferrable: release the worker while the window's requests run: each round fetches the
        finished results, submits up to the window, and defers until ``resume_fraction`` of the
        running requests (at least one) have finished. Each resume starts the task again (a worker
        start, re-reading the inputs and the journal), so it pays off for requests that run for
        minutes, not for instant ones (see the README's "Bulk inference").
    :param resume_fraction: deferrable only: the share of the deferred window that must finish
        before the task resumes (0 < x <= 1; default 0.25).
    :param max_cost: spending limit of this task across its tries, checked before every POST against
        the estimates its journal already counts; the first POST that would pass it stops submission
        (see ``_batch_budget``): items in flight finish, the rest are recorded ``not_submitted``.
    :param budget: a named budget shared with other tasks (``budget_limit``, ``budget_scope`` and
        ``strict_budget`` as on ``FalInferenceOperator``); reserved item by item, same stop.
    :param cache: per item, reuse the stored result of an earlier request with the same app id,
        path, arguments and ``cache_version`` (no request, no spend; its line says ``"cached": true``)
        and store every fetched result (see ``_batch_cache``).
    :param cache_version: part of every item's cache key.
    :param cache_path: where results are cached (default: the connection's ``cache_path`` extra,
        else ``[fal] cache_path``).
    """

    template_fields: Sequence[str] = ("app_id", "inputs", "path", "output_path", "options", "headers")
    template_fields_renderers = {"inputs": "json", "options": "json", "headers": "json"}

    def __init__(
        self,
        *,
        app_id: str,
        inputs: Any,
        output_path: Any,
        path: str = "",
        options: Mapping[str, Any] | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_item_attempts: int = 3,
        min_success_ratio: float = 1.0,
        wait_mode: str = "stream",
        poll_interval: float = 1.0,
        max_poll_interval: float = 10.0,
        retry_min_wait: float = 1.0,
        retry_max_wait: float = 60.0,
        on_orphan: str = "resubmit",
        download_media: bool = False,
        progress_interval: float = 30.0,
        cancel_on_kill: bool = True,
        max_cost: float | None = None,
        budget: str | None = None,
        budget_limit: float | None = None,
        budget_scope: str = "global",
        strict_budget: bool = False,
        cache: bool = False,
        cache_version: str | int | None = None,
        cache_path: Any = None,
        deferrable: bool = False,
        resume_fraction: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cost_settings = CostSettings.build(
            max_cost=max_cost,
            budget=budget,
            budget_limit=budget_limit,
            budget_scope=budget_scope,
            strict_budget=strict_budget,
        )
        if not isinstance(cache, bool):
            raise FalInputError(f"cache must be True or False, got {cache!r}")
        self.cache = cache
        self.cache_version = cache_version
        self.cache_path = cache_path
        self.app_id = app_id
        self.inputs = inputs
        self.output_path = output_path
        self.path = path
        self.options = merge_options(options, {})
        check_submit_params(app_id, None)
        check_number(max_in_flight, "max_in_flight", integer=True, minimum=1)
        check_number(max_item_attempts, "max_item_attempts", integer=True, minimum=1)
        check_number(min_success_ratio, "min_success_ratio", minimum=0)
        if min_success_ratio > 1:
            raise FalInputError(f"min_success_ratio must be between 0 and 1, got {min_success_ratio!r}")
        for value, name in ((poll_interval, "poll_interval"), (max_poll_interval, "max_poll_interval")):
            check_number(value, name, positive=True)
        for value, name in ((retry_min_wait, "retry_min_wait"), (retry_max_wait, "retry_max_wait")):
            check_number(value, name, minimum=0)
        check_number(progress_interval, "progress_interval", positive=True)
        check_number(resume_fraction, "resume_fraction", positive=True)
        if resume_fraction > 1:
            raise FalInputError(f"resume_fraction must be in (0, 1], got {resume_fraction!r}")
        if not isinstance(deferrable, bool):
            raise FalInputError(f"deferrable must be True or False, got {deferrable!r}")
        if wait_mode not in BATCH_WAIT_MODES:
            raise FalInputError(
                f"FalBatchOperator wait_mode must be one of {', '.join(BATCH_WAIT_MODES)}, got "
                f"{wait_mode!r} (webhook mode is not offered for batches)"
            )
        if on_orphan not in ORPHAN_POLICIES:
            raise FalInputError(f"on_orphan must be one of {', '.join(ORPHAN_POLICIES)}, got {on_orphan!r}")
        if output_path is None:
            raise FalInputError("FalBatchOperator needs output_path=... (results never go to XCom)")
        if not _known_later(inputs) and not isinstance(inputs, list | tuple | str):
            raise BatchInputError(
                "FalBatchOperator inputs must be a list of argument dicts, an XComArg or an "
                f"ObjectStoragePath to a JSONL file; got {type(inputs).__name__}"
            )
        self.max_in_flight = max_in_flight
        self.max_item_attempts = max_item_attempts
        self.min_success_ratio = float(min_success_ratio)
        self.wait_mode = wait_mode
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.retry_min_wait = retry_min_wait
        self.retry_max_wait = retry_max_wait
        self.on_orphan = on_orphan
        self.download_media = download_media
        self.progress_interval = progress_interval
        self.cancel_on_kill = cancel_on_kill
        self.deferrable = deferrable
        self.resume_fraction = float(resume_fraction)
        self._engine: BatchEngine | None = None

    # -- execute -------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        return self._round(context, frozenset())

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """A deferrable batch resumes: some of the window finished (``event["done"]``)."""
        status, _ = validate_event(event)
        assert isinstance(event, dict)  # validate_event refuses anything else
        if status == "error":
            raise error_from_event(event)
        done = event.get("done") or []
        self.log.info("fal batch: resumed, %d requests of the window finished", len(done))
        return self._round(context, frozenset(str(request_id) for request_id in done))

    def _round(self, context: Context, ready: frozenset[str]) -> dict[str, Any]:
        """One run of the engine: the whole batch, or (deferrable) one round of it."""
        self.check_rendered(context)
        inputs = _coerce_inputs(self.inputs)
        shared = dict(self.options or {})
        # Everything that can be wrong locally fails here, before the first POST.
        total = validate_all(inputs, app_id=str(self.app_id), path=self.path or "", shared_options=shared)
        ti = context["ti"]
        folder = self._folder(context)
        check_writable(folder)
        # Resolved here: the engine's thread must not look up the connection itself.
        self.log.debug("fal queue at %s", self.hook.settings.queue_url)
        state = load_state(folder)
        try_number = int(getattr(ti, "try_number", 1) or 1)
        budget = None
        if self.cost_settings.limited:
            budget = BatchBudget(self.cost_settings, self.hook, context, spent=state.spent)
        engine = BatchEngine(
            self.hook,
            self._engine_settings(),
            items=iter_items(inputs, app_id=str(self.app_id), path=self.path or "", shared_options=shared),
            state=state,
            journal=Journal(folder, try_number),
            outputs=Outputs(
                results=Part(folder / "parts", "results", try_number),
                failed=Part(folder / "parts", "failed", try_number),
                media=self._media_copier(folder) if self.download_media else None,
            ),
            progress=Progress(
                total=total,
                skipped=len(state.finished),
                spend=None if budget is None else budget.spent_so_far,
            ),
            log=self.log,
            budget=budget,
            cache=self._open_cache(),
            ready=ready,
        )
        self._engine = engine
        self.log.info(
            "fal batch of %d inputs on %s: %d finished by earlier tries, %d to reattach; window %d; "
            "output %s",
            total,
            self.app_id,
            len(state.finished),
            sum(1 for item in state.open.values() if item.request_id),
            self.max_in_flight,
            folder,
        )
        started = time.monotonic()
        run_guarded(
            context,
            lambda: self._drive(engine),
            request=lambda: _Window(dict(engine.in_flight)) if engine.in_flight else None,
            cancel=lambda window, why: self._cancel_window(engine, window, why),
            cancel_on_kill=self.cancel_on_kill,
            log=self.log,
        )
        if engine.halted:
            raise FalBatchIncomplete(
                f"fal batch stopped before it finished ({len(engine.in_flight)} requests were in flight); "
                "its journal lets the next try resume"
            )
        if engine.parked:
            self._defer_window(list(engine.parked.values()))
        return self._finish(folder, engine, total, time.monotonic() - started, try_number)

    def _folder(self, context: Context) -> Any:
        ti = context["ti"]
        return batch_folder(
            _storage_path(self.output_path, "output_path"),
            str(context["run_id"]),
            str(ti.task_id),
            _map_index(ti),
        )

    def freeze_inputs(self, context: Context) -> Any:
        """Write the inputs as ``inputs.jsonl`` in the task's folder and return that path.

        A deferrable task that computes its inputs (``@task.fal_batch``) resumes in a new process
        without them, and computing them again might give others (the journal would then see new
        items and pay for them). Its rounds read this file instead; each try writes it afresh.
        """
        shared = dict(self.options or {})
        inputs = _coerce_inputs(self.inputs)
        validate_all(inputs, app_id=str(self.app_id), path=self.path or "", shared_options=shared)
        folder = self._folder(context)
        check_writable(folder)
        target = folder / FROZEN_INPUTS
        with target.open("wb") as handle:
            for _, raw in iter_raw(inputs):
                handle.write(dumps(raw))
        return target

    def frozen_inputs(self, context: Context) -> Any:
        """The inputs :meth:`freeze_inputs` wrote for this task."""
        return self._folder(context) / FROZEN_INPUTS

    def _open_cache(self) -> BatchCache | None:
        """The result cache, probed before the first POST (a bad cache path fails the task here)."""
        if not self.cache:
            return None
        cache = open_cache(self.cache_path, self.hook)
        if cache is None:
            raise FalInputError(
                "cache=True needs a place to store results: set cache_path=... on the operator, the "
                "'cache_path' extra of the fal connection, or [fal] cache_path (AIRFLOW__FAL__CACHE_PATH)"
            )
        cache.check_writable()
        return BatchCache(cache, self.hook, app_id=str(self.app_id), cache_version=self.cache_version)

    def _engine_settings(self) -> EngineSettings:
        return EngineSettings(
            app_id=str(self.app_id),
            max_in_flight=self.max_in_flight,
            max_item_attempts=self.max_item_attempts,
            wait_mode=self.wait_mode,
            poll_interval=self.poll_interval,
            max_poll_interval=self.max_poll_interval,
            retry_min_wait=self.retry_min_wait,
            retry_max_wait=self.retry_max_wait,
            progress_interval=self.progress_interval,
            on_orphan=self.on_orphan,
            park=self.deferrable,
        )

    def _defer_window(self, refs: list[FalRequestRef]) -> None:
        ready = max(1, math.ceil(len(refs) * self.resume_fraction))
        self.log.info(
            "fal batch: %d requests running; deferring until %d of them have finished", len(refs), ready
        )
        self.defer(
            trigger=FalBatchTrigger(
                requests=[ref.to_xcom() for ref in refs],
                ready_count=ready,
                fal_conn_id=self.fal_conn_id,
                cancel_on_kill=self.cancel_on_kill,
                wait_mode="poll",
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
            ),
            method_name="execute_complete",
        )

    def _media_copier(self, folder: Any) -> Any:
        from fal_provider.results import persist_result

        def copy(index: int, result: Any) -> Any:
            copied, _ = persist_result(
                result, folder / "media" / str(index), download_media=True, fetch=self.hook.fetch_media
            )
            return copied

        return copy

    def _drive(self, engine: BatchEngine) -> None:
        """Run the engine on its own event loop in a thread; this (main) thread only waits, so the
        shutdown guard's SIGTERM handler can interrupt it at any moment."""
        errors: list[BaseException] = []

        async def main() -> None:
            try:
                await engine.run()
            finally:
                await self.hook.aclose_shared_client()

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=target, name="fal-batch", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.5)
        except WorkerShutdown:
            engine.halt(cancel=False)  # the guard decides about cancelling, once it knows the state
            thread.join()
            raise
        if errors:
            raise errors[0]

    def _cancel_window(self, engine: BatchEngine, window: _Window, why: str) -> None:
        """A user's kill: cancel every request of the window (at most ``max_in_flight``)."""
        self.log.warning("Cancelling %d fal requests in flight (%s)", len(window.refs), why)

        def cancel(item: tuple[int, FalRequestRef]) -> None:
            index, ref = item
            try:
                self.hook.cancel(ref)
            except Exception as err:
                self.log.warning("Could not cancel fal request %s: %s", ref.request_id, err)
            engine.journal.released(index)

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="fal-batch-cancel") as pool:
            list(pool.map(cancel, window.refs.items()))
        engine.journal.close()

    def on_kill(self) -> None:
        """Timeouts and kills outside the shutdown guard: stop and cancel the window."""
        if self._engine is not None:
            self._engine.halt(cancel=self.cancel_on_kill)

    # -- the end -------------------------------------------------------------------------------

    def _finish(
        self, folder: Any, engine: BatchEngine, total: int, elapsed: float, try_number: int
    ) -> dict[str, Any]:
        assembled = assemble(folder)
        succeeded = assembled.counts.get("success", 0)
        ratio = succeeded / total if total else 1.0
        processed = sum(engine.progress.counts.values())
        calls = dict(engine.http_calls)
        manifest: dict[str, Any] = {
            "app_id": str(self.app_id),
            "total": total,
            "counts": assembled.counts,
            "success_ratio": round(ratio, 6),
            "min_success_ratio": self.min_success_ratio,
            "results_path": assembled.results_path,
            "failed_inputs_path": assembled.failed_inputs_path,
            "folder": str(folder),
            "cost": _cost_summary(engine.budget),
            "cache": None
            if engine.cache is None
            else {"hits": engine.cache.hits, "stored": engine.cache.stored},
            "this_try": {
                "try_number": try_number,
                "items": processed,
                "from_earlier_tries": engine.progress.skipped,
                "elapsed_s": round(elapsed, 3),
                "items_per_s": round(processed / elapsed, 2) if elapsed > 0 else None,
                "http_calls": calls,
                "http_calls_per_item": round(sum(calls.values()) / processed, 3) if processed else None,
            },
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        self.log.info(
            "fal batch finished: %s of %d succeeded (%.1f%%), counts %s; results in %s",
            succeeded,
            total,
            100 * ratio,
            assembled.counts,
            assembled.results_path,
        )
        if ratio < self.min_success_ratio:
            message = (
                f"fal batch: {succeeded} of {total} inputs succeeded ({ratio:.1%}), under "
                f"min_success_ratio={self.min_success_ratio}; failed inputs are in "
                f"{assembled.failed_inputs_path}"
            )
            if assembled.retryable_failures:
                raise FalBatchIncomplete(message + f" ({assembled.retryable_failures} may pass on a retry)")
            raise FalBatchFailed(message)
        return manifest


def _cost_summary(budget: BatchBudget | None) -> dict[str, Any] | None:
    """What the manifest says about money: the estimated spend and, after a stop, why."""
    if budget is None:
        return None
    return {
        "estimated_spend": money(budget.spent),
        "max_cost": budget.settings.max_cost,
        "budget": budget.key,
        "budget_stop": None if budget.stopped is None else str(budget.stopped),
    }


def iter_batch_results(manifest: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The output lines of a finished batch (its XCom manifest), one per input, streamed.

    Each line has ``index``, ``status`` (``success``, ``failed``, ``expired``, ``orphaned``,
    ``not_submitted``),
    ``request_id``, ``meta`` and either ``result`` or ``error`` / ``error_type``.
    """
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(str(manifest["results_path"]))
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
