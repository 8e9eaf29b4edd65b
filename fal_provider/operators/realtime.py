"""``FalRealtimeOperator``: push a batch of inputs through one fal realtime session.

A realtime session is one WebSocket (msgpack frames, a short-lived token from fal's REST tokens
endpoint) over which many inputs travel without an HTTP request each. Frames carry no request id,
so **outputs are matched to inputs by order within a session**: the operator assumes the app
answers every message exactly once, in the order it received them (true of fal's realtime apps,
which process a connection's messages one after another). Raising ``max_in_flight`` above 1
pipelines messages and relies on that assumption; keep 1 for an app that may skip or reorder
answers (for example one that drops stale buffered frames).

When the session drops mid-batch, the answers to the messages in flight are lost with it, so the
hook (``FalHook.arealtime_batch``) opens a new session (with a fresh token) and sends those inputs
again: no input is lost and each gets exactly one output, though the app may have processed a
resent input twice. ``run_realtime_batch`` and ``is_session_drop`` are importable from here too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from fal_provider.exceptions import FalError, FalInputError
from fal_provider.hooks.fal import (
    FalHook,
    check_max_buffering,
    check_msgpack_inputs,
    is_session_drop,
    run_realtime_batch,
)
from fal_provider.models import TEMPLATE_HINT, check_number, is_templated
from fal_provider.operators.lifecycle import RateLimitedLog, name_the_app
from fal_provider.results import (
    DEFAULT_MAX_XCOM_BYTES,
    check_rendered_result_rules,
    check_result_rules,
    output_name,
    result_rules,
    shape_items,
)

__all__ = ["FalRealtimeOperator", "is_session_drop", "run_realtime_batch"]


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
            return await self.hook.arealtime_batch(
                self.app_id,
                inputs,
                path=self.path,
                max_buffering=self.max_buffering,
                token_expiration=self.token_expiration,
                max_in_flight=self.max_in_flight,
                message_timeout=self.message_timeout,
                max_reconnects=self.max_reconnects,
                progress=progress,
            )
        finally:
            await self.hook.aclose_shared_client()  # the token calls' client dies with this loop

    def _rules(self, context: Any) -> dict[str, Any]:
        return {
            **result_rules(self),
            "name": output_name(context, "realtime"),
            "fetch": self.hook.fetch_media,
        }


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
    check_max_buffering(max_buffering)
    check_number(log_interval, "log_interval", minimum=0)
