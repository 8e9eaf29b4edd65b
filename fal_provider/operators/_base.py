"""Shared machinery of the fal operators: the hook, input checks, waiting, completing.

:class:`FalWaitingOperator` holds the whole "wait for a request, then fetch and shape its result"
flow so the inference and result operators differ only in how they get a request reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from fal_provider._compat import conf
from fal_provider.exceptions import FalInputError
from fal_provider.models import AppId, CompletedStatus, FalRequestRef, RequestOptions
from fal_provider.operators._checks import (
    TEMPLATE_HINT,
    check_headers,
    check_max_consecutive_errors,
    check_option_numbers,
    check_poll_intervals,
    check_rendered_result_rules,
    check_result_rules,
    check_seconds,
    check_submit_inputs,
    input_errors,
    is_templated,
)
from fal_provider.operators._completion import cancel_quietly, raise_unless_success
from fal_provider.operators._waiting import SyncWaiter
from fal_provider.operators.links import LINK_XCOM_KEY, FalRequestLink, request_url
from fal_provider.results import (
    DEFAULT_MAX_XCOM_BYTES,
    ResultTooLargeError,
    fetch_limit,
    shape_result,
    too_large_message,
)
from fal_provider.triggers._wait import (
    Status,
    completed_event,
    resolve_webhook_deferrable,
    validate_backstop_interval,
    validate_wait_mode,
)
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.webhooks.urls import TaskIdentity, WebhookUrlError, build_webhook_url
from fal_provider.webhooks.waiting import DEFAULT_BACKSTOP_INTERVAL

if TYPE_CHECKING:
    from airflow.sdk import Context

    from fal_provider.hooks.fal import FalHook

#: XCom key of the request reference pushed before waiting (handy for other tasks and debugging).
REQUEST_XCOM_KEY = "fal_request"
#: How much later than ``timeout`` Airflow's own deferral timeout fires, as a backstop only.
DEFER_TIMEOUT_MARGIN = 120.0


class WebhookInputError(FalInputError, WebhookUrlError):
    """No usable callback URL: a ``WebhookUrlError`` (what callers catch) that spends no retries."""


def default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


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
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    if not isinstance(arguments, Mapping):
        raise FalInputError(
            f"arguments must be a dict of model inputs (or a JSON object string), got "
            f"{type(arguments).__name__}: {str(arguments)[:200]!r}.{TEMPLATE_HINT}"
        )
    return dict(arguments)


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


def coerce_request(request: Any) -> FalRequestRef:
    try:
        return FalRequestRef.coerce(request)
    except ValueError as err:
        raise FalInputError(str(err)) from None


def fal_hook(fal_conn_id: str, headers: Mapping[str, str] | None) -> FalHook:
    """The hook of an operator or sensor (imported late: the hook module is heavy for DAG parsing)."""
    from fal_provider.hooks.fal import FalHook

    return FalHook(fal_conn_id, headers=dict(headers) if headers else None)


def publish_request(context: Context, hook: FalHook, ref: FalRequestRef, log: Any) -> None:
    """Push the reference and the link before any waiting, so both show while the task is deferred."""
    ti = context["ti"]
    ti.xcom_push(key=REQUEST_XCOM_KEY, value=ref.to_xcom())
    try:
        queue_url = hook.settings.queue_url
    except Exception:  # a link is a convenience: never fail the task over it
        queue_url = None
    url = request_url(ref, queue_url)
    ti.xcom_push(key=LINK_XCOM_KEY, value=url)
    log.info("fal request %s on %s: %s", ref.request_id, ref.app_id, url)


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
            check_headers(headers)

    @cached_property
    def hook(self) -> FalHook:
        return fal_hook(self.fal_conn_id, self.headers)

    def check_rendered(self, context: Context) -> None:
        """The parse-time checks again on the rendered values, plus those that need the filesystem.

        Called first in ``execute()``, before any call that could start paid work.
        """
        check_headers(self.headers)

    def push_request(self, context: Context, ref: FalRequestRef) -> None:
        publish_request(context, self.hook, ref, self.log)


class FalWaitingOperator(FalBaseOperator):
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
        with input_errors():
            self.wait_mode = validate_wait_mode(wait_mode)
            self.deferrable = resolve_webhook_deferrable(self.wait_mode, deferrable, default_deferrable())
            self.backstop_interval = validate_backstop_interval(backstop_interval)
        check_poll_intervals(poll_interval, max_poll_interval)
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.timeout = check_seconds(timeout, "timeout")
        self.max_consecutive_errors = check_max_consecutive_errors(max_consecutive_errors)
        self.cancel_on_kill = cancel_on_kill
        self.log_fal_logs = log_fal_logs
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
        end_time = None if self.timeout is None else time.time() + self.timeout
        if self.deferrable:
            self.defer(
                trigger=self.build_trigger(ref, end_time),
                method_name="execute_complete",
                timeout=None
                if self.timeout is None
                else timedelta(seconds=self.timeout + DEFER_TIMEOUT_MARGIN),
            )
        event = SyncWaiter(self.hook, log=self.log, **self._wait_policy(end_time)).wait(ref)
        return self.complete(context, event)

    def build_trigger(self, ref: FalRequestRef, end_time: float | None) -> FalRequestTrigger:
        return FalRequestTrigger(
            request=ref.to_xcom(),
            fal_conn_id=self.fal_conn_id,
            cancel_on_kill=self.cancel_on_kill,
            backstop_interval=self.backstop_interval,
            **self._wait_policy(end_time),
        )

    def _wait_policy(self, end_time: float | None) -> dict[str, Any]:
        """What the trigger and the worker-side waiter share, so both paths wait alike."""
        return {
            "wait_mode": self.wait_mode,
            "poll_interval": self.poll_interval,
            "max_poll_interval": self.max_poll_interval,
            "end_time": end_time,
            "max_consecutive_errors": self.max_consecutive_errors,
            "log_fal_logs": self.log_fal_logs,
        }

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired; everything needed is in ``event`` (defer kwargs may be lost)."""
        return self.complete(context, event)

    def complete(self, context: Context, event: Any) -> Any:
        """The single completion handler (allow-list in :func:`raise_unless_success`)."""
        ref = raise_unless_success(event, self.hook)
        self._request = ref
        result = self._fetch_result(ref)
        value = shape_result(
            result,
            select=self.select,
            output_path=self.output_path,
            download_media=self.download_media,
            max_xcom_bytes=self.max_xcom_bytes,
            request_id=ref.request_id,
        )
        self.after_success(context, ref)
        return value

    def _fetch_result(self, ref: FalRequestRef) -> Any:
        """The result, refused before it is read whole when it can only go to XCom and is too big."""
        from fal_provider.hooks._limited import ResponseTooLarge

        limit = fetch_limit(self.select, self.output_path, self.max_xcom_bytes)
        try:
            return self.hook.get_result(ref, max_bytes=limit)
        except ResponseTooLarge as err:
            message = too_large_message(err.size, err.limit, at_least=not err.declared)
            raise ResultTooLargeError(message, request_id=ref.request_id) from None

    def after_success(self, context: Context, ref: FalRequestRef) -> None:
        """Hook for subclasses (the inference operator forgets its stored request here)."""

    def on_kill(self) -> None:
        """Cancel the request being waited on by this worker (best effort, never raises)."""
        if self._request is not None and self.cancel_on_kill:
            cancel_quietly(self.hook, self._request, "task killed")
