"""``FalRealtimeOperator``: push a batch of inputs through one fal realtime session.

A realtime session is one WebSocket (msgpack frames, a short-lived token from fal's REST tokens
endpoint) over which many inputs travel without an HTTP request each. Frames carry no request id,
so **outputs are matched to inputs by order within a session**: the operator assumes the app
answers every message exactly once, in the order it received them (true of fal's realtime apps,
which process a connection's messages one after another). Raising ``max_in_flight`` above 1
pipelines messages and relies on that assumption; keep 1 for an app that may skip or reorder
answers (for example one that drops stale buffered frames).

When the session drops mid-batch, the answers to the messages in flight are lost with it, so the
operator opens a new session (with a fresh token) and sends those inputs again: no input is lost
and each gets exactly one output, though the app may have processed a resent input twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from airflow.sdk import BaseOperator

from fal_provider.exceptions import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalInputError,
    FalNotFoundError,
    FalStreamError,
    FalTimeoutError,
)
from fal_provider.inputs import TEMPLATE_HINT, check_number, is_templated
from fal_provider.operators._checks import check_rendered_result_rules, check_result_rules
from fal_provider.operators._stream_utils import (
    BatchLedger,
    RateLimitedLog,
    check_msgpack_inputs,
    name_the_app,
    output_name,
    result_rules,
    shape_items,
)
from fal_provider.results import DEFAULT_MAX_XCOM_BYTES

if TYPE_CHECKING:
    from fal_provider.hooks.fal import FalHook

#: fal's realtime server closes an idle session with this ``x-fal-error``; a reconnect is the cure.
_IDLE_ERRORS = frozenset({"TIMEOUT"})


class RealtimeSessionLike(Protocol):
    """What the batch needs from ``FalHook.arealtime()``'s session."""

    async def send(self, message: Mapping[str, Any]) -> None: ...

    async def recv(self, timeout: float | None = None) -> Any: ...


SessionFactory = Callable[[], AbstractAsyncContextManager[Any]]


class SessionDropped(Exception):
    """Internal signal: the session ended under us and may be reopened."""


def is_session_drop(err: BaseException) -> bool:
    """Whether ``err`` means "the socket went away" (reconnect) rather than "the app said no".

    ``x-fal-error`` frames are the app's verdict and end the batch, except fal's idle ``TIMEOUT``,
    which only asks the client to reconnect. Anything else the hook reports as a broken stream or
    connection is a drop.
    """
    error_code = _x_fal_error_code(err)
    if error_code is not None:
        return error_code in _IDLE_ERRORS
    return isinstance(err, FalStreamError | FalConnectionError)


def _x_fal_error_code(err: BaseException) -> str | None:
    """The ``error`` field of an ``x-fal-error`` frame, if ``err`` came from one."""
    for attr in ("error", "error_code"):
        value = getattr(err, attr, None)
        if isinstance(value, str) and value:
            return value
    detail = getattr(err, "detail", None)
    if isinstance(detail, Mapping) and detail.get("type") == "x-fal-error":
        return str(detail.get("error") or "UNKNOWN_ERROR")
    if getattr(err, "error_type", None) == "x-fal-error":
        return "UNKNOWN_ERROR"
    return None


async def run_realtime_batch(
    open_session: SessionFactory,
    inputs: Sequence[Mapping[str, Any]],
    *,
    app_id: str,
    max_in_flight: int = 1,
    message_timeout: float | None = 60.0,
    max_reconnects: int = 3,
    progress: RateLimitedLog | None = None,
    reconnect_delay: float = 0.2,
) -> list[Any]:
    """Send every input through realtime sessions from ``open_session``; outputs in input order.

    ``open_session`` is called for the first session and again after each drop (each call fetches
    a fresh token), at most ``max_reconnects`` more times. Usable directly from TaskFlow code:
    ``asyncio.run(run_realtime_batch(lambda: hook.arealtime(app_id), inputs, app_id=app_id))``.
    """
    check_msgpack_inputs(app_id, inputs)
    ledger = BatchLedger(len(inputs))
    reconnects = 0
    while not ledger.done:
        try:
            async with open_session() as session:
                await _pump(session, inputs, ledger, app_id, max_in_flight, message_timeout, progress)
        except SessionDropped as dropped:
            lost = ledger.session_lost()
            reconnects += 1
            if reconnects > max_reconnects:
                raise FalStreamError(
                    f"fal realtime session to {app_id} dropped {reconnects} time(s), more than "
                    f"max_reconnects={max_reconnects}; {ledger.completed}/{len(inputs)} output(s) received. "
                    f"Last cause: {dropped.__cause__}"
                ) from dropped.__cause__
            if progress is not None:
                line = (
                    f"{app_id} realtime session dropped ({dropped.__cause__}); reconnecting with a fresh "
                    f"token and resending {lost} input(s) [{reconnects}/{max_reconnects}]"
                )
                progress.offer(lambda line=line: line, force=True)  # type: ignore[misc]
            await asyncio.sleep(min(reconnect_delay * reconnects, 2.0))
    return ledger.results()


async def _pump(
    session: RealtimeSessionLike,
    inputs: Sequence[Mapping[str, Any]],
    ledger: BatchLedger,
    app_id: str,
    max_in_flight: int,
    message_timeout: float | None,
    progress: RateLimitedLog | None,
) -> None:
    """Keep up to ``max_in_flight`` messages outstanding and take answers in order until done."""
    total = len(inputs)
    while not ledger.done:
        await _fill_window(session, inputs, ledger, app_id, max_in_flight)
        waiting_for = ledger.oldest_in_flight
        try:
            output = await asyncio.wait_for(session.recv(), message_timeout)
        except asyncio.TimeoutError:
            raise FalTimeoutError(
                f"fal realtime app {app_id} sent no output for input #{waiting_for} within "
                f"message_timeout={message_timeout:g}s ({ledger.completed}/{total} output(s) received)"
            ) from None
        except FalError as err:
            raise _session_verdict(err, app_id) from err
        _record(ledger, output, app_id, total, progress)


async def _fill_window(
    session: RealtimeSessionLike,
    inputs: Sequence[Mapping[str, Any]],
    ledger: BatchLedger,
    app_id: str,
    max_in_flight: int,
) -> None:
    while (index := ledger.next_to_send(max_in_flight)) is not None:
        try:
            await session.send(inputs[index])
        except FalError as err:
            verdict = _session_verdict(err, app_id)
            if isinstance(verdict, SessionDropped):
                # The server may have said why before hanging up (an x-fal-error frame, or answers
                # still buffered); read what is left so the task reports the real cause.
                await _drain(session, ledger, app_id)
            raise verdict from err
        ledger.sent(index)


async def _drain(session: RealtimeSessionLike, ledger: BatchLedger, app_id: str) -> None:
    """Take buffered frames off a closing session: keep answers, raise an app error if one is there."""
    while True:
        try:
            output = await asyncio.wait_for(session.recv(), 1.0)
        except (asyncio.TimeoutError, SessionDropped):
            return
        except FalError as err:
            verdict = _session_verdict(err, app_id)
            if isinstance(verdict, SessionDropped):
                return
            raise verdict from err
        if output is not None and ledger.in_flight:
            ledger.received(output)


def _record(
    ledger: BatchLedger, output: Any, app_id: str, total: int, progress: RateLimitedLog | None
) -> None:
    if output is None:  # a control frame the hook passed through; not an answer
        return
    ledger.received(output)
    if progress is not None:
        done = ledger.completed
        progress.offer(lambda: f"{app_id} realtime: {done}/{total} output(s)")


def _session_verdict(err: FalError, app_id: str) -> Exception:
    """What a session error means for the batch: a drop to recover from, or the error to raise."""
    if is_session_drop(err):
        return SessionDropped()
    code = _x_fal_error_code(err)
    reason = getattr(err, "reason", "") or ""
    if code == "NOT_FOUND":
        return FalNotFoundError(
            f"fal app {app_id} has no realtime endpoint (x-fal-error NOT_FOUND{': ' + reason if reason else ''})",
            error_type=code,
            detail=getattr(err, "detail", None),
        )
    if code in ("Unauthorized", "UNAUTHORIZED"):
        return FalAuthError(
            f"fal realtime session to {app_id} was refused (x-fal-error {code}"
            f"{': ' + reason if reason else ''}); check the key and that it may use this app",
            error_type=code,
        )
    return err


class FalRealtimeOperator(BaseOperator):
    """Send a batch of inputs through one fal realtime session and return one output per input.

    :param app_id: the fal app (``owner/app[/path]``). Templated.
    :param inputs: a list of input mappings (the app's input fields). Templated; an ``XComArg``
        resolving to a list works too. Each must be msgpack-encodable (checked before connecting).
    :param path: the realtime endpoint path (fal's convention is ``/realtime``). Templated.
    :param max_in_flight: how many messages may await an answer at once (see the module docstring
        for the ordering assumption behind values above 1).
    :param message_timeout: seconds to wait for each answer (``None``: forever).
    :param max_reconnects: how many times a dropped session is reopened before the task fails.
    :param max_buffering: fal's ``max_buffering`` query parameter (1..60), passed through.
    :param token_expiration: lifetime in seconds of each session's temporary token.
    :param select: field path(s) kept from each output (see :mod:`fal_provider.results`).
    :param output_path: write all outputs there and return a manifest; nothing is written unless
        the whole batch succeeded.
    :param download_media: with ``output_path``, also copy media files the outputs point at.
    :param max_xcom_bytes: refuse a result bigger than this (``None`` or ``0``: no limit).
    :param log_interval: at most one progress line per this many seconds (``0``: every output).
    :param fal_conn_id: the fal connection.
    """

    template_fields: Sequence[str] = ("app_id", "inputs", "path")
    template_fields_renderers = {"inputs": "json"}
    ui_color = "#d7ecff"

    def __init__(
        self,
        *,
        app_id: str,
        inputs: Sequence[Mapping[str, Any]] | Any,
        path: str = "/realtime",
        max_in_flight: int = 1,
        message_timeout: float | None = 60.0,
        max_reconnects: int = 3,
        max_buffering: int | None = None,
        token_expiration: int = 120,
        select: str | Sequence[str] | None = None,
        output_path: Any = None,
        download_media: bool = False,
        max_xcom_bytes: int | None = DEFAULT_MAX_XCOM_BYTES,
        log_interval: float = 5.0,
        fal_conn_id: str = "fal_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_settings(max_in_flight, message_timeout, max_reconnects, max_buffering, log_interval)
        check_number(token_expiration, "token_expiration", integer=True, positive=True)
        check_result_rules(select, output_path, download_media, max_xcom_bytes)
        if not is_templated(inputs):
            check_msgpack_inputs(app_id, _as_input_list(inputs, app_id))
        self.app_id = app_id
        self.inputs = inputs
        self.path = path
        self.max_in_flight = max_in_flight
        self.message_timeout = message_timeout
        self.max_reconnects = max_reconnects
        self.max_buffering = max_buffering
        self.token_expiration = token_expiration
        self.select = select
        self.output_path = output_path
        self.download_media = download_media
        self.max_xcom_bytes = max_xcom_bytes
        self.log_interval = log_interval
        self.fal_conn_id = fal_conn_id

    @cached_property
    def hook(self) -> FalHook:
        from fal_provider.hooks.fal import FalHook

        return FalHook(fal_conn_id=self.fal_conn_id)

    def execute(self, context: Any) -> Any:
        inputs = _as_input_list(self.inputs, self.app_id)
        check_msgpack_inputs(self.app_id, inputs)  # before any connection or token is made
        check_rendered_result_rules(self.select, self.output_path)
        if not inputs:
            self.log.info("No inputs for %s; nothing to send", self.app_id)
            return shape_items([], **self._rules(context))
        self.log.info(
            "Sending %d input(s) to %s%s (max_in_flight=%d)",
            len(inputs),
            self.app_id,
            self.path,
            self.max_in_flight,
        )
        started = time.monotonic()
        progress = RateLimitedLog(self.log, self.log_interval)
        try:
            outputs = asyncio.run(self._run(inputs, progress))
        except FalError as err:
            raise name_the_app(err, self.app_id, "fal realtime session to") from err
        self.log.info(
            "%s realtime batch finished: %d output(s) in %.2fs",
            self.app_id,
            len(outputs),
            time.monotonic() - started,
        )
        return shape_items(outputs, **self._rules(context))

    async def _run(self, inputs: list[Any], progress: RateLimitedLog) -> list[Any]:
        try:
            return await run_realtime_batch(
                self._open_session,
                inputs,
                app_id=self.app_id,
                max_in_flight=self.max_in_flight,
                message_timeout=self.message_timeout,
                max_reconnects=self.max_reconnects,
                progress=progress,
            )
        finally:
            await self.hook.aclose_shared_client()  # the token calls' client dies with this loop

    def _open_session(self) -> AbstractAsyncContextManager[Any]:
        return self.hook.arealtime(
            self.app_id,
            path=self.path,
            max_buffering=self.max_buffering,
            token_expiration=self.token_expiration,
        )

    def _rules(self, context: Any) -> dict[str, Any]:
        return {**result_rules(self), "name": output_name(context, "realtime")}


def _as_input_list(inputs: Any, app_id: str) -> list[Any]:
    if isinstance(inputs, Mapping | str | bytes) or not isinstance(inputs, Sequence):
        hint = TEMPLATE_HINT if isinstance(inputs, str) else ""
        raise FalInputError(
            f"inputs for {app_id} must be a list of input mappings, got {type(inputs).__name__}.{hint}"
        )
    return list(inputs)


def _check_settings(
    max_in_flight: Any,
    message_timeout: Any,
    max_reconnects: Any,
    max_buffering: Any,
    log_interval: Any,
) -> None:
    """Reject impossible settings when the DAG is parsed."""
    check_number(max_in_flight, "max_in_flight", integer=True, minimum=1)
    check_number(message_timeout, "message_timeout", positive=True, allow_none=True)
    check_number(max_reconnects, "max_reconnects", integer=True, minimum=0)
    check_number(max_buffering, "max_buffering", integer=True, minimum=1, allow_none=True)
    if max_buffering is not None and max_buffering > 60:
        raise FalInputError(
            f"max_buffering must be an integer from 1 to 60 (fal's limit), got {max_buffering!r}"
        )
    check_number(log_interval, "log_interval", minimum=0)
