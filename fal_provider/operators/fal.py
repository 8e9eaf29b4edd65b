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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fal_provider._compat import TaskDeferred
from fal_provider.exceptions import FalInputError
from fal_provider.models import FalRequestRef, RequestOptions
from fal_provider.operators._base import (
    FalBaseOperator,
    FalWaitingOperator,
    check_submit_params,
    coerce_request,
    merge_options,
    prepare_submit,
    task_webhook_url,
)
from fal_provider.operators._completion import cancel_quietly
from fal_provider.operators._reattach import RequestStore, reattach_status, submission_fingerprint
from fal_provider.operators._shutdown import run_guarded
from fal_provider.operators.links import FalRequestLink
from fal_provider.operators.realtime import FalRealtimeOperator
from fal_provider.operators.streaming import FalStreamOperator
from fal_provider.triggers._wait import Status

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "FalCancelOperator",
    "FalInferenceOperator",
    "FalRealtimeOperator",
    "FalRequestLink",
    "FalResultOperator",
    "FalStreamOperator",
    "FalSubmitOperator",
]


def _guarded(op: FalWaitingOperator, context: Context, work: Callable[[], Any]) -> Any:
    """Run an ``execute`` / ``execute_complete`` body so SIGTERM tells a shutdown from a user's kill
    (:mod:`~fal_provider.operators._shutdown`)."""
    try:
        return run_guarded(
            context,
            work,
            request=lambda: op._request,
            cancel=lambda ref, why: cancel_quietly(op.hook, ref, why),
            cancel_on_kill=op.cancel_on_kill,
            log=op.log,
        )
    except TaskDeferred:
        # The trigger waits now. A SIGTERM before this process exits (the Task SDK's handler calls
        # on_kill) is a shutdown, not a reason to cancel the request the trigger is waiting for.
        op._request = None
        raise


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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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

    def _submit(self, webhook_url: str | None = None) -> FalRequestRef:
        arguments, options = prepare_submit(self.app_id, self.arguments, self.options)
        extra: dict[str, Any] = {"webhook_url": webhook_url} if webhook_url else {}
        return self.hook.submit(str(self.app_id), arguments, path=self.path or "", options=options, **extra)

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
        ref = self._submit(url)
        self.push_request(context, ref)
        return ref.to_xcom()


class FalInferenceOperator(_SubmittingOperator, FalWaitingOperator):
    """Run a fal model as one task: submit, wait, return the (shaped) result.

    Chain models by templating one task's output into the next task's ``arguments``, e.g.
    ``arguments={"image_url": "{{ ti.xcom_pull('t2i')['images'][0]['url'] }}"}`` or an ``XComArg``,
    and fan out with ``FalInferenceOperator.partial(...).expand(arguments=[...])``.

    :param reattach_on_retry: on a retry, wait for the request a previous try submitted when it is
        still queued, running or already succeeded, instead of paying for a new one.

    Submit parameters are documented on :class:`_SubmittingOperator`, waiting and result
    parameters on :class:`~fal_provider.operators._base.FalWaitingOperator`.
    """

    template_fields = ("app_id", "arguments", "path", "headers", "options", "select", "output_path")
    template_fields_renderers = {"arguments": "json", "headers": "json", "options": "json"}

    def __init__(self, *, reattach_on_retry: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reattach_on_retry = reattach_on_retry

    def execute(self, context: Context) -> Any:
        return _guarded(self, context, lambda: self._execute(context))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return _guarded(self, context, lambda: self.complete(context, event))

    def _execute(self, context: Context) -> Any:
        self.check_rendered(context)
        fingerprint = self._fingerprint()
        if self.reattach_on_retry:
            previous = self._previous_request(context, fingerprint)
            if previous is not None:
                return self.wait_for(context, *previous)
        if self.deferrable:
            check_trigger_connection(self.hook, self.fal_conn_id)
        url = task_webhook_url(self.hook, context) if self.wait_mode == "webhook" else None
        ref = self._submit(url)
        # Saved before any wait: a worker lost from here on leaves a request a retry can find.
        self._request = ref
        if self.reattach_on_retry:
            RequestStore(context).save(ref, fingerprint)
        return self.wait_for(context, ref)

    def _previous_request(self, context: Context, fingerprint: str) -> tuple[FalRequestRef, Status] | None:
        """A request an earlier try submitted that is still worth waiting for, with its status.

        The store is not cleared on success (see :mod:`~fal_provider.operators._reattach`): a try
        that follows a success Airflow never recorded finds the request succeeded and returns its
        result again, without a second submit.
        """
        stored = RequestStore(context).load()
        if stored is None:
            return None
        status = reattach_status(self.hook, stored, fingerprint)
        return None if status is None else (stored.ref, status)


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
        return _guarded(self, context, lambda: self.wait_for(context, coerce_request(self.request)))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return _guarded(self, context, lambda: self.complete(context, event))


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
