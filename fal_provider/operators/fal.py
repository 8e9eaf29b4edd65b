"""Operators that run fal models as Airflow tasks.

* :class:`FalSubmitOperator` - queue a request, return its small reference.
* :class:`FalInferenceOperator` - submit, wait (deferred or not), return the result: fal's
  "subscribe" as one task, with reattach-on-retry so a retry does not pay twice.
* :class:`FalResultOperator` - wait for any request reference and return its result.
* :class:`FalCancelOperator` - cancel a request; one that already finished is not an error.
* :class:`FalStreamOperator` / :class:`FalRealtimeOperator` - the ``/stream`` and realtime calling
  patterns (defined in ``streaming.py`` / ``realtime.py``, re-exported here so every operator
  imports from one module).

The POST happens in ``execute()`` on the worker, once per try; triggers only read.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from fal_provider.cache import CacheEntry
from fal_provider.exceptions import FalInputError, FalIntentNotRecorded, ResponseTooLarge
from fal_provider.hooks.platform import endpoint_of
from fal_provider.models import (
    TEMPLATE_HINT,
    AppId,
    CompletedStatus,
    FalRequestRef,
    RequestOptions,
    check_seconds,
    check_task_headers,
    coerce_request,
    input_digest,
    input_errors,
    is_templated,
    loads_if_json,
)
from fal_provider.operators._caching import TaskCache, open_cache
from fal_provider.operators._orphans import check_on_orphan, recover
from fal_provider.operators.lifecycle import (
    CostGuard,
    CostSettings,
    FalRequestLink,
    RequestStore,
    StoredRequest,
    cancel_quietly,
    guard,
    publish_request,
    raise_unless_success,
    reattach_status,
    record_cost,
    submission_fingerprint,
)
from fal_provider.operators.lineage import FalLineageMixin, record_result
from fal_provider.operators.realtime import FalRealtimeOperator
from fal_provider.operators.streaming import FalStreamOperator
from fal_provider.results import (
    DEFAULT_MAX_XCOM_BYTES,
    ResultTooLargeError,
    check_rendered_result_rules,
    check_result_rules,
    fetch_limit,
    shape_result,
    too_large_message,
)
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.waiting import (
    DEFAULT_BACKSTOP_INTERVAL,
    DEFER_TIMEOUT_MARGIN,
    Status,
    SyncWaiter,
    WaitPolicy,
    completed_event,
    default_deferrable,
    resolve_webhook_deferrable,
)
from fal_provider.webhooks.urls import TaskIdentity, WebhookUrlError, build_webhook_url

# ---------------------------------------------------------------------------
# Submit inputs: checked at parse time, and again after rendering
# The inputs of a submit (``app_id``, ``arguments``, request options): checked at parse time when
# they are known, and coerced and checked again after rendering, the way the hook will check them,
# before the paid POST.
# ---------------------------------------------------------------------------

#: Request options that are numbers: pydantic would read ``True`` as ``1``.
NUMERIC_OPTIONS = ("start_timeout", "max_queue_length", "object_lifecycle")


def check_option_numbers(options: Any) -> None:
    """Numeric request options given as booleans (``start_timeout=True``) are mistakes, not ``1``."""
    if not isinstance(options, Mapping):
        return
    for name in NUMERIC_OPTIONS:
        if isinstance(options.get(name), bool):
            raise FalInputError(
                f"Invalid fal request options: {name} must be a number, got {options[name]!r} "
                "(a bool is not a number of seconds or items)"
            )


def check_submit_inputs(app_id: Any, arguments: Any, options: Any) -> None:
    """What the hook checks before a submit, run first so its failure is permanent.

    Uses the hook's own parsers (app id, options, JSON body), so the two can never disagree;
    imported late because the hook modules are heavy for DAG parsing.
    """
    from fal_provider.hooks.fal import check_submit

    check_option_numbers(options)
    with input_errors():
        check_submit(app_id, arguments, options)


def merge_options(options: Any, overrides: Mapping[str, Any]) -> Any:
    """Combine ``options=`` with individual option kwargs; validate now if nothing is templated."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(options, RequestOptions):
        options = options.model_dump(exclude_none=True)
    if options is not None and not isinstance(options, Mapping):
        if given:
            raise FalInputError(
                "Pass request options either as options=... or as keyword arguments, not both"
            )
        if not is_templated(options):
            raise FalInputError(
                f"options must be a dict or RequestOptions, got {type(options).__name__}.{TEMPLATE_HINT}"
            )
        return options  # templated as a whole; validated at execute
    merged = {**dict(options or {}), **given}
    if not is_templated(merged):
        build_request_options(merged)
    return merged


def build_request_options(options: Any) -> RequestOptions:
    """Rendered ``options`` as ``RequestOptions``; any problem is a permanent input error."""
    if not isinstance(options, Mapping | RequestOptions | None):
        raise FalInputError(f"options must render to a dict, got {type(options).__name__}.{TEMPLATE_HINT}")
    check_option_numbers(options)
    with input_errors():
        return RequestOptions.build(options)  # type: ignore[arg-type]


def check_submit_params(app_id: Any, arguments: Any) -> None:
    """Parse-time checks of the submit inputs that are already known (the rest run in ``execute``)."""
    if not is_templated(app_id):
        with input_errors():
            AppId.parse(app_id)
    if arguments is not None and not is_templated(arguments):
        coerce_arguments(arguments)


def prepare_submit(app_id: Any, arguments: Any, options: Any) -> tuple[dict[str, Any], RequestOptions]:
    """Rendered submit inputs, checked the way the hook will check them, before the paid POST."""
    body = coerce_arguments(arguments)
    built = build_request_options(options)
    check_submit_inputs(app_id, body, built)
    return body, built


def coerce_arguments(arguments: Any) -> dict[str, Any]:
    """Rendered ``arguments`` as a dict; a JSON string (non-native templating) is accepted too."""
    if arguments is None:
        return {}
    arguments = loads_if_json(arguments)
    if not isinstance(arguments, Mapping):
        raise FalInputError(
            f"arguments must be a dict of model inputs (or a JSON object string), got "
            f"{type(arguments).__name__}: {str(arguments)[:200]!r}.{TEMPLATE_HINT}"
        )
    return dict(arguments)


def may_name_cached_copy(value: Any) -> bool:
    """Whether ``value`` holds a string a result cache could own, so the cache must be opened.

    Cached copies are named by the cache's ``ObjectStoragePath`` (``file:///...``, ``s3://...``);
    no cache is ever written at an ``http(s)`` root (fsspec's HTTP filesystem is read-only), so a
    task whose inputs and result hold only plain text, ``http(s)`` URLs and ``data:`` URIs leaves
    the cache (and its configuration lookup) out entirely. Walks what
    :meth:`~fal_provider.cache.ResultCache.upload_inputs` walks: mappings and lists.
    """
    if isinstance(value, Mapping):
        return any(may_name_cached_copy(item) for item in value.values())
    if isinstance(value, list):
        return any(may_name_cached_copy(item) for item in value)
    if not isinstance(value, str) or "://" not in value or value.startswith("data:"):
        return False
    return value.split("://", 1)[0].lower() not in ("http", "https")


# ---------------------------------------------------------------------------
# The operators
# ---------------------------------------------------------------------------

if TYPE_CHECKING:
    from airflow.sdk import Context

    from fal_provider.cache import ResultCache
    from fal_provider.hooks.fal import FalHook
    from fal_provider.hooks.platform import FetchedResult

__all__ = [
    "FalCancelOperator",
    "FalInferenceOperator",
    "FalRealtimeOperator",
    "FalRequestLink",
    "FalResultOperator",
    "FalStreamOperator",
    "FalSubmitOperator",
]


class WebhookInputError(FalInputError, WebhookUrlError):
    """No usable callback URL: a ``WebhookUrlError`` (what callers catch) that spends no retries."""


def task_webhook_url(hook: Any, context: Context, task_id: str | None = None) -> str:
    """The ``fal_webhook`` URL that resumes this task (or ``task_id`` of the same run and map index).

    Raises a permanent ``FalInputError`` naming the ``webhook_base_url`` extra when the connection
    has none or one that is not an absolute http(s) URL: better to fail before paying for a request
    nobody would be told about.
    """
    base_url = hook.settings.webhook_base_url or ""
    try:
        identity = TaskIdentity.from_task_instance(context["ti"])
        if task_id is not None:
            identity = TaskIdentity(identity.dag_id, identity.run_id, task_id, identity.map_index)
        return build_webhook_url(base_url, identity)
    except WebhookUrlError as err:
        raise WebhookInputError(str(err)) from None


class FalBaseOperator(BaseOperator):
    """Connection, extra headers and the request link, shared by every fal operator.

    :param fal_conn_id: the ``fal`` connection (key, base URLs).
    :param headers: extra HTTP headers sent with every call this task makes (templated).
    """

    operator_extra_links = (FalRequestLink(),)

    def __init__(
        self, *, fal_conn_id: str = "fal_default", headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.fal_conn_id = fal_conn_id
        self.headers = headers
        if not is_templated(headers):
            check_task_headers(headers)

    @cached_property
    def hook(self) -> FalHook:
        from fal_provider.hooks.fal import FalHook  # late: the hook module is heavy for DAG parsing

        return FalHook(self.fal_conn_id, headers=dict(self.headers) if self.headers else None)

    def check_rendered(self, context: Context) -> None:
        """The parse-time checks again on the rendered values, plus those that need the filesystem.

        Called first in ``execute()``, before any call that could start paid work.
        """
        check_task_headers(self.headers)

    def push_request(self, context: Context, ref: FalRequestRef) -> None:
        publish_request(context, self.hook, ref, self.log)


class FalWaitingOperator(FalLineageMixin, FalBaseOperator):
    """Wait for a request (deferred or on the worker), then fetch and shape its result.

    :param deferrable: wait in the triggerer instead of on the worker (default from
        ``[operators] default_deferrable``).
    :param wait_mode: ``poll``, ``stream`` (status SSE with polling fallback) or ``webhook`` (fal
        calls the API server back; needs the connection's ``webhook_base_url`` and always defers).
    :param backstop_interval: ``webhook`` mode: seconds between status checks if no callback comes.
    :param poll_interval: floor of the adaptive poll interval (seconds).
    :param max_poll_interval: ceiling the interval grows to while queued (seconds).
    :param timeout: total wait (seconds or timedelta), an absolute deadline; when hit the request is
        cancelled and the task fails with a retryable ``FalTimeoutError``. Airflow 3 does not bound
        deferred time by ``execution_timeout``, so set this for long queues.
    :param max_consecutive_errors: transient status errors in a row tolerated while waiting.
    :param cancel_on_kill: cancel the fal request when the task is killed / marked failed.
    :param log_fal_logs: copy fal's log lines and queue position into the task log.
    :param select: field path(s) of the result to return (``images.0.url``).
    :param output_path: where to write the full result (URI or ObjectStoragePath); returns a manifest.
    :param download_media: with ``output_path``, copy media files there and rewrite their URLs.
    :param max_xcom_bytes: refuse returning a larger value without ``output_path`` (``0``: no limit).
    """

    def __init__(
        self,
        *,
        deferrable: bool | None = None,
        wait_mode: str = "poll",
        poll_interval: float = 1.0,
        max_poll_interval: float = 30.0,
        timeout: float | timedelta | None = None,
        max_consecutive_errors: int = 5,
        cancel_on_kill: bool = True,
        log_fal_logs: bool = False,
        select: str | Sequence[str] | None = None,
        output_path: Any = None,
        download_media: bool = False,
        max_xcom_bytes: int | None = DEFAULT_MAX_XCOM_BYTES,
        backstop_interval: float = DEFAULT_BACKSTOP_INTERVAL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.wait_policy = WaitPolicy.from_task_params(
            wait_mode,
            poll_interval,
            max_poll_interval,
            max_consecutive_errors,
            log_fal_logs,
            backstop_interval,
        )
        self.deferrable = resolve_webhook_deferrable(wait_mode, deferrable, default_deferrable())
        self.timeout = check_seconds(timeout, "timeout")
        self.cancel_on_kill = cancel_on_kill
        self.select = select
        self.output_path = output_path
        self.download_media = download_media
        self.max_xcom_bytes = check_result_rules(select, output_path, download_media, max_xcom_bytes)
        self._request: FalRequestRef | None = None

    def check_rendered(self, context: Context) -> None:
        super().check_rendered(context)
        check_rendered_result_rules(self.select, self.output_path)

    # -- waiting ---------------------------------------------------------------------------

    def wait_for(self, context: Context, ref: FalRequestRef, status: Status | None = None) -> Any:
        """Finish now if the request is already done; otherwise defer or wait on the worker.

        ``status``: one the caller has just read (reattaching), so it is not asked for twice.
        """
        self._request = ref
        self.push_request(context, ref)
        if status is None:
            status = self.hook.get_status(ref)
        if isinstance(status, CompletedStatus):
            return self.complete(context, completed_event(status, ref))
        policy = self.wait_policy.until(None if self.timeout is None else time.time() + self.timeout)
        self.log.info(
            "Waiting for fal request %s with wait_mode=%s, %s",
            ref.request_id,
            policy.wait_mode,
            "deferred to the triggerer" if self.deferrable else "on the worker (deferrable=False)",
        )
        if self.deferrable:
            self.defer(
                trigger=FalRequestTrigger.for_request(
                    ref, policy, fal_conn_id=self.fal_conn_id, cancel_on_kill=self.cancel_on_kill
                ),
                method_name="execute_complete",
                timeout=None
                if self.timeout is None
                else timedelta(seconds=self.timeout + DEFER_TIMEOUT_MARGIN),
            )
        event = SyncWaiter(self.hook, policy, log=self.log).wait(ref)
        return self.complete(context, event)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired; everything needed is in ``event`` (defer kwargs may be lost)."""
        return self.complete(context, event)

    def complete(self, context: Context, event: Any) -> Any:
        """The single completion handler (allow-list in :func:`raise_unless_success`)."""
        ref = raise_unless_success(event, self.hook)
        self._request = ref
        fetched = self._fetch_result(ref)
        result = self.received(context, ref, fetched.data, fetched.billable_units)
        value = self.shape(result, ref.request_id)
        metrics = event.get("metrics") if isinstance(event, dict) else None
        # Kept on the operator too: OpenLineage reads it in a forked process that cannot read XCom.
        self.fal_cost = record_cost(
            self,
            context,
            app_id=ref.app_id,
            request_id=ref.request_id,
            units=fetched.billable_units,
            metrics=metrics,
        ).to_xcom()
        inputs = getattr(self, "lineage_inputs", None) or getattr(self, "arguments", None)
        source: dict[str, Any] = {
            "app_id": ref.app_id,
            "request_ids": [ref.request_id],
            "arguments": inputs,
            "result": result,
            "value": value,
            "metrics": metrics,
        }
        if getattr(self, "outlets", None):  # the asset events need the record now
            self.keep_lineage(context, record_result(**source))
        else:  # built if and when the OpenLineage listener asks (FalLineageMixin)
            self.fal_lineage_source = {**source, "pid": os.getpid()}
        self.after_success(context, ref)
        return value

    def shape(self, result: Any, request_id: str | None) -> Any:
        return shape_result(
            result,
            select=self.select,
            output_path=self.output_path,
            download_media=self.download_media,
            max_xcom_bytes=self.max_xcom_bytes,
            request_id=request_id,
            fetch=self.media_fetch(),
        )

    def received(self, context: Context, ref: FalRequestRef, result: Any, units: float | None) -> Any:
        """Hook for subclasses: the fetched result (and the units fal billed for it, when known),
        before it is shaped; the cache stores it here."""
        return result

    def media_fetch(self) -> Callable[[str, float], tuple[bytes, str | None]]:
        """How ``download_media`` reads a media URL: the hook's download, without the key."""
        return self.hook.fetch_media

    def _fetch_result(self, ref: FalRequestRef) -> FetchedResult:
        """The result and its billed units, refused before it is read whole when it can only go to
        XCom and is too big."""
        limit = fetch_limit(self.select, self.output_path, self.max_xcom_bytes)
        try:
            return self.hook.fetch_result(ref, max_bytes=limit)
        except ResponseTooLarge as err:
            message = too_large_message(err.size, err.limit, at_least=not err.declared)
            raise ResultTooLargeError(message, request_id=ref.request_id) from None

    def after_success(self, context: Context, ref: FalRequestRef) -> None:
        """Hook for subclasses (the inference operator forgets its stored request here)."""

    def on_kill(self) -> None:
        """Cancel the request being waited on by this worker (best effort, never raises)."""
        if self._request is not None and self.cancel_on_kill:
            cancel_quietly(self.hook, self._request, "task killed")


def check_trigger_connection(hook: Any, conn_id: str) -> None:
    """Fail before paying when the trigger would not see the connection the worker sees.

    The trigger resolves it asynchronously in another process (or, under ``airflow dags test``,
    inline without the metadata database), so a connection defined only in the metadata DB can be
    invisible there and the trigger would fail after the submit, leaving the request running. The
    same asynchronous lookup, done here on a fresh event loop, must give the same key and queue URL.
    """
    from fal_provider.hooks.fal import FalHook

    worker = hook.settings
    try:
        trigger = asyncio.run(FalHook(conn_id).aget_settings())
    except Exception as err:
        raise FalInputError(
            f"The trigger could not resolve the fal connection {conn_id!r} ({type(err).__name__}); "
            "nothing was submitted. Under `airflow dags test`, connections stored in the metadata "
            f"database are not visible to triggers: define it as AIRFLOW_CONN_{conn_id.upper()} or "
            "in a secrets backend, or use deferrable=False."
        ) from None
    if trigger.key != worker.key or trigger.queue_url != worker.queue_url:
        raise FalInputError(
            f"The trigger resolves the fal connection {conn_id!r} differently from the worker (other key "
            "or queue URL); nothing was submitted. Under `airflow dags test`, connections stored in the "
            f"metadata database are not visible to triggers: define it as AIRFLOW_CONN_{conn_id.upper()} "
            "or in a secrets backend, or use deferrable=False."
        )


class _SubmittingOperator(FalBaseOperator):
    """Submit-side parameters shared by the submit and inference operators.

    The typed options can be given as ``options=`` (a dict or ``RequestOptions``) or as keyword
    arguments (``priority=``, ``runner_hint=``, ``start_timeout=``, ``no_retry=``, ``store_io=``,
    ``object_lifecycle=``, ``disable_fallback=``, ``max_queue_length=``). They are validated when the
    DAG is parsed if nothing is templated, and again after rendering, before anything is paid for.

    ``validate_arguments`` (default on): before submitting, check the rendered arguments against
    the model's input schema from fal's Platform API (cached per process), so a missing required
    field or a wrong type fails as ``FalInputError`` without paying for a 422; a deprecated model
    logs fal's replacement. Without a schema (no Platform API, a private app) nothing is checked.

    Money (see the Money section of :mod:`fal_provider.operators.lifecycle`):

    :param tags: request tags (``X-Fal-Tags``) besides ``airflow.dag`` / ``airflow.task``, which every
        request carries; fal's usage reports split by them. fal's rules are checked here.
    :param max_cost: the most this task may spend, across all its tries (USD); a submit whose
        estimate would pass it fails with ``FalBudgetExceeded``.
    :param budget: a named budget shared by every task that names it (limit from ``budget_limit`` or
        ``[fal] budgets``; running total in ``[fal] budget_database_url``).
    :param budget_limit: the named budget's limit (USD), overriding ``[fal] budgets``.
    :param budget_scope: ``global`` (one total for the name) or ``dag_run`` (one total per DAG run).
    :param strict_budget: refuse a limited submit whose cost cannot be estimated (default: let it
        through, counted as 0 until its result is priced).

    A ``BaseOperator`` subclass (not a plain mixin) so Airflow's ``partial()`` / ``expand()`` checks
    see these parameters: they only look at ``__init__`` methods the operator metaclass wrapped.
    """

    def __init__(
        self,
        *,
        app_id: str,
        arguments: Any = None,
        path: str = "",
        options: RequestOptions | Mapping[str, Any] | None = None,
        priority: str | None = None,
        runner_hint: str | None = None,
        start_timeout: float | None = None,
        no_retry: bool | None = None,
        store_io: bool | None = None,
        object_lifecycle: int | str | None = None,
        disable_fallback: bool | None = None,
        max_queue_length: int | None = None,
        tags: Mapping[str, str] | None = None,
        max_cost: float | None = None,
        budget: str | None = None,
        budget_limit: float | None = None,
        budget_scope: str = "global",
        strict_budget: bool = False,
        validate_arguments: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.validate_arguments = validate_arguments
        self.cost_settings = CostSettings.build(
            tags=tags,
            max_cost=max_cost,
            budget=budget,
            budget_limit=budget_limit,
            budget_scope=budget_scope,
            strict_budget=strict_budget,
        )
        self.app_id = app_id
        self.arguments = arguments
        self.path = path
        option_kwargs = dict(
            priority=priority,
            runner_hint=runner_hint,
            start_timeout=start_timeout,
            no_retry=no_retry,
            store_io=store_io,
            object_lifecycle=object_lifecycle,
            disable_fallback=disable_fallback,
            max_queue_length=max_queue_length,
        )
        self.options = merge_options(options, option_kwargs)
        check_submit_params(app_id, arguments)

    def _submit(
        self,
        context: Context,
        webhook_url: str | None = None,
        *,
        settle: bool = False,
        before_post: Callable[[dict[str, Any]], None] | None = None,
    ) -> FalRequestRef:
        """The paid POST, tagged, after the spending limits let it through.

        ``settle``: count the estimate as spent at once (a task that never fetches the result).
        ``before_post`` gets the exact body about to be sent (the intent record is written there).
        """
        arguments, options = prepare_submit(self.app_id, self.arguments, self.options)
        guard = CostGuard(self.cost_settings, self.hook, context)  # checks the tags: no network yet
        if self.validate_arguments:  # against the model's input schema, where fal serves one
            self.hook.validate_arguments(str(self.app_id), arguments, path=self.path or "")
        reservation = guard.before_submit(endpoint_of(str(self.app_id), self.path or ""))
        arguments = self._reachable_inputs(arguments)
        if before_post is not None:
            before_post(arguments)
        extra: dict[str, Any] = {"webhook_url": webhook_url} if webhook_url else {}
        try:
            ref = self.hook.submit(
                str(self.app_id),
                arguments,
                path=self.path or "",
                options=options,
                headers=guard.headers(),
                **extra,
            )
        except BaseException as err:
            guard.not_submitted(reservation, err)
            raise
        self.fal_spend = guard.submitted(ref.request_id, reservation, settle=settle)
        return ref

    def _reachable_inputs(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Inputs that name copies in the result cache, uploaded to fal's CDN (fal cannot read them)."""
        if not may_name_cached_copy(arguments):
            return arguments
        cache = open_cache(getattr(self, "cache_path", None), self.hook)
        if cache is None:
            return arguments
        return cache.upload_inputs(
            arguments, lambda data, kind, name: self.hook.upload(data, content_type=kind, file_name=name)
        )

    def _fingerprint(self) -> str:
        """What the submit would pay for, after rendering (a stored request is reused only for it)."""
        arguments, options = prepare_submit(self.app_id, self.arguments, self.options)
        return submission_fingerprint(str(self.app_id), self.path or "", arguments, options)


class FalSubmitOperator(_SubmittingOperator):
    """Queue a request on fal and return its reference (app id, request id, URLs) as XCom.

    Pair it with :class:`~fal_provider.sensors.fal.FalRequestSensor` and :class:`FalResultOperator`
    when waiting should be a separate task (e.g. many submits, one wait).

    :param webhook_wake_task_id: submit with a ``fal_webhook`` URL that resumes that task of the
        same run (a ``FalRequestSensor`` with ``wait_mode="webhook"``): this task does not wait, so
        the callback must name the one that does.

    Submit parameters (``app_id``, ``arguments``, ``path``, request options) are documented on
    :class:`_SubmittingOperator`.
    """

    template_fields = ("app_id", "arguments", "path", "headers", "options")
    template_fields_renderers = {"arguments": "json", "headers": "json", "options": "json"}

    def __init__(self, *, webhook_wake_task_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhook_wake_task_id = webhook_wake_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        self.check_rendered(context)
        url = None
        if self.webhook_wake_task_id:
            url = task_webhook_url(self.hook, context, self.webhook_wake_task_id)
        ref = self._submit(context, url, settle=True)
        self.push_request(context, ref)
        return ref.to_xcom()


#: ``_shared``'s answer when no other task's claim covers the input: this task submits.
_PAY = object()


class FalInferenceOperator(_SubmittingOperator, FalWaitingOperator):
    """Run a fal model as one task: submit, wait, return the (shaped) result.

    Chain models by templating one task's output into the next task's ``arguments``, e.g.
    ``arguments={"image_url": "{{ ti.xcom_pull('t2i')['images'][0]['url'] }}"}`` or an ``XComArg``,
    and fan out with ``FalInferenceOperator.partial(...).expand(arguments=[...])``.

    :param reattach_on_retry: on a retry, wait for the request a previous try submitted when it is
        still queued, running or already succeeded, instead of paying for a new one.
    :param on_orphan: what a retry does when the previous try died between sending the submit and
        saving fal's answer and fal's request history cannot identify the request: ``"resubmit"``
        (default; may pay once more) or ``"fail"`` (never pays twice; a human clears the task).
        See :mod:`~fal_provider.operators._orphans`.
    :param cache: return the stored result of an earlier request with the same app id, path,
        arguments and ``cache_version`` instead of calling fal (:mod:`fal_provider.cache`); a miss
        stores the result, with its media copied into the cache and its URLs pointing at the copies.
    :param cache_version: part of the cache key: change it to stop reusing what was cached before.
    :param refresh_cache: pay for a new request even when the cache has the result, and store it.
    :param cache_path: where results are cached (folder, URI or ObjectStoragePath); default: the
        connection's ``cache_path`` extra, else ``[fal] cache_path``.

    Submit parameters are documented on :class:`_SubmittingOperator`, waiting and result
    parameters on :class:`~FalWaitingOperator`.
    """

    template_fields = (
        "app_id",
        "arguments",
        "path",
        "headers",
        "options",
        "select",
        "output_path",
        "cache_path",
        "cache_version",
    )
    template_fields_renderers = {"arguments": "json", "headers": "json", "options": "json"}

    def __init__(
        self,
        *,
        reattach_on_retry: bool = True,
        on_orphan: str = "resubmit",
        cache: bool = False,
        cache_version: str | int | None = None,
        refresh_cache: bool = False,
        cache_path: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reattach_on_retry = reattach_on_retry
        self.on_orphan = check_on_orphan(on_orphan)
        self.cache = bool(cache)
        self.cache_version = cache_version
        self.refresh_cache = bool(refresh_cache)
        self.cache_path = cache_path

    def execute(self, context: Context) -> Any:
        return guard(self, context, lambda: self._execute(context), request_attr="_request")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return guard(self, context, lambda: self.complete(context, event), request_attr="_request")

    def _execute(self, context: Context) -> Any:
        self.check_rendered(context)
        fingerprint = self._fingerprint()
        cache = self._task_cache(context)
        entry = cache.lookup() if cache is not None and not self.refresh_cache else None
        if cache is not None and entry is not None:
            return self._cache_hit(context, cache, entry)
        if self.reattach_on_retry:
            previous = self._previous_request(context, fingerprint)
            if previous is not None:
                return self.wait_for(context, *previous)
        if cache is not None:
            shared = self._shared(context, cache, fingerprint)
            if shared is not _PAY:
                return shared
        if self.deferrable:
            check_trigger_connection(self.hook, self.fal_conn_id)
        url = task_webhook_url(self.hook, context) if self.wait_policy.wait_mode == "webhook" else None
        ref = self._submit(context, url, before_post=self._intent_writer(context, fingerprint))
        # Saved before any wait: a worker lost from here on leaves a request a retry can find.
        self._request = ref
        if self.reattach_on_retry:
            RequestStore(context).save(ref, fingerprint)
        if cache is not None:
            cache.record_request(ref)
        return self.wait_for(context, ref)

    def _cache_hit(self, context: Context, cache: TaskCache, entry: CacheEntry) -> Any:
        cache.log_hit(entry, context)
        return self.shape(entry.result, entry.request_id)

    def _shared(self, context: Context, cache: TaskCache, fingerprint: str) -> Any:
        """Claim the key before paying (``refresh_cache`` pays regardless; the claim still tells
        other tasks to wait for this one), or take what another task's claim led to: its stored
        result, or its request to wait for. ``_PAY`` when this task is the one to pay."""
        if self.refresh_cache:
            cache.cache.claim(cache.key, cache.owner)
            return _PAY
        waiting = cache.claim_or_wait(self.hook)
        if waiting is None:
            return _PAY
        if waiting.entry is not None:
            return self._cache_hit(context, cache, waiting.entry)
        assert waiting.ref is not None
        RequestStore(context).save(waiting.ref, fingerprint)
        # Killing this task must not cancel a request another task paid for and waits on.
        self.cancel_on_kill = False
        return self.wait_for(context, waiting.ref)

    def _intent_writer(self, context: Context, fingerprint: str) -> Callable[[dict[str, Any]], None] | None:
        """Writes the intent record just before the POST (see :mod:`~fal_provider.operators._orphans`)."""
        if not self.reattach_on_retry:
            return None
        store = RequestStore(context)

        def write(body: dict[str, Any]) -> None:
            if not store.save_intent(fingerprint, input_digest(body), time.time()):
                raise FalIntentNotRecorded(
                    f"{self.app_id}: the task's state store could not record the submit it was about to "
                    "make, so nothing was submitted (a request no later try could find might be paid "
                    "twice); the retry submits once the store answers"
                )

        return write

    def _task_cache(self, context: Context) -> TaskCache | None:
        if not self.cache:
            return None
        arguments, _ = prepare_submit(self.app_id, self.arguments, self.options)
        return TaskCache.open(
            self.hook,
            context,
            app_id=str(self.app_id),
            path=self.path or "",
            arguments=arguments,
            cache_path=self.cache_path,
            cache_version=self.cache_version,
        )

    def received(self, context: Context, ref: FalRequestRef, result: Any, units: float | None) -> Any:
        """With ``cache=True``: store the result; what goes on has its URLs on the cached copies.

        The result is paid for by now, so a cache that fails here is logged, not raised.
        """
        if not self.cache:
            return result
        try:
            cache = self._task_cache(context)
            assert cache is not None
            return cache.store(self.hook, context, ref, result, units)
        except Exception as err:
            self.log.warning("Could not cache the result of fal request %s: %s", ref.request_id, err)
            return result

    def media_fetch(self) -> Callable[[str, float], tuple[bytes, str | None]]:
        """The hook's download, except for a URL naming a cached copy, read from the cache itself.

        The cache is opened on the first URL that could be a copy (see :func:`may_name_cached_copy`),
        not before: a result of fal CDN URLs never looks it up.
        """
        opened: list[ResultCache | None] = []

        def fetch(url: str, timeout: float) -> tuple[bytes, str | None]:
            if not may_name_cached_copy(url):
                return self.hook.fetch_media(url, timeout)
            if not opened:
                opened.append(open_cache(self.cache_path, self.hook))
            cache = opened[0]
            if cache is None:
                return self.hook.fetch_media(url, timeout)
            return cache.read(url, self.hook.fetch_media, timeout)

        return fetch

    def _previous_request(self, context: Context, fingerprint: str) -> tuple[FalRequestRef, Status] | None:
        """A request an earlier try submitted that is still worth waiting for, with its status.

        The store is not cleared on success (see :mod:`~fal_provider.operators.lifecycle`): a try
        that follows a success Airflow never recorded finds the request succeeded and returns its
        result again, without a second submit.
        """
        stored = RequestStore(context).load()
        if stored is None:
            return None
        if stored.ref is None:  # an intent: the try died between the POST and saving its answer
            if stored.fingerprint != fingerprint or stored.intent_at is None:
                return None
            ref = recover(
                self.hook,
                str(self.app_id),
                self.path or "",
                stored.intent_at,
                stored.input_sha or "",
                self.on_orphan,
            )
            if ref is None:
                return None
            RequestStore(context).save(ref, fingerprint)
            stored = StoredRequest(ref, fingerprint)
        status = reattach_status(self.hook, stored, fingerprint)
        return None if status is None or stored.ref is None else (stored.ref, status)


class FalResultOperator(FalWaitingOperator):
    """Return the result of any request reference, XCom-friendly.

    ``request`` is the XCom value of :class:`FalSubmitOperator` (or the sensor), its JSON string,
    or ``{"app_id": ..., "request_id": ...}``. A request still running is waited for with the same
    logic as :class:`FalInferenceOperator`; a failed one fails the task with fal's error.
    """

    template_fields = ("request", "headers", "select", "output_path")
    template_fields_renderers = {"request": "json", "headers": "json"}

    def __init__(self, *, request: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    def execute(self, context: Context) -> Any:
        self.check_rendered(context)
        return guard(
            self,
            context,
            lambda: self.wait_for(context, coerce_request(self.request)),
            request_attr="_request",
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return guard(self, context, lambda: self.complete(context, event), request_attr="_request")


class FalCancelOperator(FalBaseOperator):
    """Cancel a fal request. Returns fal's answer: ``CANCELLATION_REQUESTED``, ``ALREADY_COMPLETED``
    or ``NOT_FOUND``; only other errors fail the task, so it is safe in cleanup paths
    (e.g. ``trigger_rule="all_done"``).
    """

    template_fields = ("request", "headers")
    template_fields_renderers = {"request": "json", "headers": "json"}

    def __init__(self, *, request: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    def execute(self, context: Context) -> str:
        self.check_rendered(context)
        ref = coerce_request(self.request)
        outcome = self.hook.cancel(ref)
        if outcome == "NOT_FOUND":
            self.log.warning("fal does not know request %s (NOT_FOUND); nothing to cancel", ref.request_id)
        else:
            self.log.info("Cancel fal request %s: %s", ref.request_id, outcome)
        return str(outcome)
