"""A sensor that waits for any fal request to finish.

It reuses the operators' trigger, so deferred waiting (``deferrable=True``) behaves exactly like
``FalInferenceOperator``'s. The sensor's ``timeout`` is the deadline; hitting it raises
``AirflowSensorTimeout`` (no retries, ``soft_fail`` applies), as for every Airflow sensor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue

from fal_provider._compat import AirflowSensorTimeout
from fal_provider.exceptions import FalInputError
from fal_provider.models import (
    CompletedStatus,
    FalRequestRef,
    check_task_headers,
    coerce_request,
    is_templated,
)
from fal_provider.operators.lifecycle import (
    FalRequestLink,
    cancel_quietly,
    guard,
    publish_request,
    raise_unless_success,
)
from fal_provider.triggers.fal import FalRequestTrigger
from fal_provider.waiting import (
    DEFAULT_BACKSTOP_INTERVAL,
    DEFER_TIMEOUT_MARGIN,
    ErrorTolerance,
    StatusReporter,
    WaitPolicy,
    completed_event,
    default_deferrable,
    resolve_webhook_deferrable,
    validate_event,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from fal_provider.hooks.fal import FalHook


class FalRequestSensor(BaseSensorOperator):
    """Wait until a fal request completes; fail when it failed.

    Returns the request reference as XCom, so a :class:`~fal_provider.operators.fal.FalResultOperator`
    downstream can take ``request=sensor.output``.

    :param request: a request reference (XCom of ``FalSubmitOperator``) or its JSON string (templated).
    :param app_id: with ``request_id``, an alternative to ``request``.
    :param request_id: see ``app_id``.
    :param deferrable: wait in the triggerer (default from ``[operators] default_deferrable``).
    :param wait_mode: ``poll`` or ``stream`` (deferred mode only; poke mode polls every ``poke_interval``),
        or ``webhook`` (always deferred): woken by the callback when the submitting task named this
        sensor (``FalSubmitOperator(webhook_wake_task_id=...)``), else at trigger start or by the backstop.
    :param backstop_interval: ``webhook`` mode: seconds between status checks if no callback comes.
    :param max_poll_interval: ceiling of the adaptive poll interval in deferred mode.
    :param max_consecutive_errors: transient errors in a row tolerated.
    :param cancel_on_kill: cancel the request when the task is killed / marked failed.
    :param cancel_on_timeout: cancel the request when the sensor times out (default off: the sensor
        usually watches a request another task owns).
    :param log_fal_logs: copy fal's logs and queue position into the task log.
    """

    template_fields = ("request", "app_id", "request_id", "headers")
    template_fields_renderers = {"request": "json", "headers": "json"}
    operator_extra_links = (FalRequestLink(),)

    def __init__(
        self,
        *,
        request: Any = None,
        app_id: str | None = None,
        request_id: str | None = None,
        fal_conn_id: str = "fal_default",
        headers: Mapping[str, str] | None = None,
        deferrable: bool | None = None,
        wait_mode: str = "poll",
        poke_interval: float = 5.0,
        max_poll_interval: float = 30.0,
        max_consecutive_errors: int = 5,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = False,
        log_fal_logs: bool = False,
        backstop_interval: float = DEFAULT_BACKSTOP_INTERVAL,
        **kwargs: Any,
    ) -> None:
        wait_policy = WaitPolicy.from_task_params(
            wait_mode,
            poke_interval,
            max_poll_interval,
            max_consecutive_errors,
            log_fal_logs,
            backstop_interval,
        )
        super().__init__(poke_interval=poke_interval, **kwargs)
        if request is None and not (app_id and request_id):
            raise FalInputError("FalRequestSensor needs request=... or both app_id=... and request_id=...")
        self.request = request
        self.app_id = app_id
        self.request_id = request_id
        self.fal_conn_id = fal_conn_id
        self.headers = headers
        self.wait_policy = wait_policy
        self.deferrable = resolve_webhook_deferrable(wait_mode, deferrable, default_deferrable())
        if not is_templated(headers):
            check_task_headers(headers)
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self._ref: FalRequestRef | None = None
        self._errors = ErrorTolerance(wait_policy.max_consecutive_errors)
        self._reporter: StatusReporter | None = None

    @cached_property
    def hook(self) -> FalHook:
        from fal_provider.hooks.fal import FalHook  # late: the hook module is heavy for DAG parsing

        return FalHook(self.fal_conn_id, headers=dict(self.headers) if self.headers else None)

    def _resolve(self, context: Context) -> FalRequestRef:
        if self._ref is None:
            if self.request is not None:
                self._ref = coerce_request(self.request)
            else:
                self._ref = self.hook.request_ref(str(self.app_id), str(self.request_id))
            publish_request(context, self.hook, self._ref, self.log)
        return self._ref

    def execute(self, context: Context) -> Any:
        return guard(self, context, lambda: self._execute(context), request_attr="_ref")

    def _execute(self, context: Context) -> Any:
        check_task_headers(self.headers)
        ref = self._resolve(context)
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue) and done.is_done:
            return done.xcom_value
        policy = self.wait_policy.until(time.time() + float(self.timeout))
        self.defer(
            trigger=FalRequestTrigger.for_request(
                ref, policy, fal_conn_id=self.fal_conn_id, cancel_on_kill=self.cancel_on_kill
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout) + DEFER_TIMEOUT_MARGIN),
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        ref = self._resolve(context)
        try:
            status = self.hook.get_status(ref, logs=self.wait_policy.log_fal_logs)
        except Exception as err:
            if not self._errors.tolerates(err):
                raise
            self.log.warning(
                "Checking fal request %s failed (%d): %s", ref.request_id, self._errors.count, err
            )
            return False
        self._errors.succeeded()
        if self._reporter is None:
            self._reporter = StatusReporter(self.log, self.wait_policy.log_fal_logs, ref)
        self._reporter.report(status)
        if not isinstance(status, CompletedStatus):
            return False
        raise_unless_success(completed_event(status, ref), self.hook)  # the operators' completion rules
        return PokeReturnValue(is_done=True, xcom_value=ref.to_xcom())

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        return guard(self, context, lambda: self._complete(event), request_attr="_ref")

    def _complete(self, event: dict[str, Any] | None) -> Any:
        status, ref = validate_event(event)
        if status == "timeout":
            if self.cancel_on_timeout:
                cancel_quietly(self.hook, ref, "sensor timeout")
            raise AirflowSensorTimeout(
                f"fal request {ref.request_id} did not finish within the sensor's timeout={self.timeout}s; "
                "raise timeout= if the queue is this slow, or set soft_fail=True to skip instead of failing"
            )
        return raise_unless_success(event, self.hook).to_xcom()

    def on_kill(self) -> None:
        if self._ref is not None and self.cancel_on_kill:
            cancel_quietly(self.hook, self._ref, "sensor killed")
