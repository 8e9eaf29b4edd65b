"""``FalStreamOperator``: call an app's ``/stream`` endpoint and keep its final event.

fal streams are Server-Sent Events from ``POST https://fal.run/{app_id}/stream``: progress and
partial outputs, then the server closes the connection. There is no explicit "final" marker, so —
as in fal's own clients — **the final event is the last event received before the server closed
the stream**. The stream is a direct call (no queue, no request id), so there is nothing to
reattach to or cancel: a retry simply streams again.

The events are consumed on an event loop so two deadlines can be enforced precisely: ``timeout``
bounds the whole stream and ``idle_timeout`` the gap between two events. A sync read could only
notice either after the next event arrived.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

from airflow.sdk import BaseOperator

from fal_provider.exceptions import (
    FalError,
    FalInputError,
    FalStreamError,
    FalTimeoutError,
    ResultTooLargeError,
)
from fal_provider.hooks.fal import FalHook, check_submit, preview, stream_error_from_event
from fal_provider.models import (
    TAGS_HEADER,
    TEMPLATE_HINT,
    check_number,
    check_tags,
    check_task_headers,
    input_errors,
    is_templated,
    request_tags,
    tags_header,
)
from fal_provider.operators.lifecycle import RateLimitedLog, name_the_app
from fal_provider.results import (
    DEFAULT_MAX_XCOM_BYTES,
    check_rendered_result_rules,
    check_result_rules,
    fetch_limit,
    output_name,
    result_rules,
    select_fields,
    shape_items,
    shape_result,
    too_large_message,
)

Collect = Literal["final", "all"]
_COLLECT_MODES = ("final", "all")


class StreamCollector:
    """Turns a sequence of events into the task's result, failing on the first error event.

    Separate from the operator so the same rules serve TaskFlow code too: every event is
    checked for an app error, progress goes to a rate-limited log, and the end of the stream
    decides the result (``final``: the last event; ``all``: every event in order).

    ``max_bytes``: with ``collect="all"``, the JSON size the event list may reach; the stream
    stops as soon as it is passed rather than collecting an unbounded list first.
    """

    def __init__(
        self,
        app_id: str,
        *,
        collect: Collect = "final",
        progress: RateLimitedLog,
        max_bytes: int | None = None,
    ) -> None:
        if collect not in _COLLECT_MODES:
            raise FalInputError(f"collect must be 'final' or 'all', got {collect!r}")
        self.app_id = app_id
        self.collect = collect
        self.count = 0
        self.last: Any = None
        self.events: list[Any] = []
        self._progress = progress
        self._max_bytes = max_bytes if collect == "all" else None
        self._size = 2  # "[]"

    def feed(self, event: Any) -> None:
        self.count += 1
        error = stream_error_from_event(self.app_id, event, self.count)
        if error is not None:
            raise error
        self.last = event
        if self.collect == "all":
            self._count_bytes(event)
            self.events.append(event)
        index = self.count
        self._progress.offer(lambda: f"{self.app_id} stream event {index}: {preview(event)}")

    def _count_bytes(self, event: Any) -> None:
        """Keep the size of ``json.dumps(self.events)`` (what XCom would store) under the limit."""
        if not self._max_bytes:
            return
        self._size += len(json.dumps(event, default=str).encode()) + (2 if self.events else 0)
        if self._size > self._max_bytes:
            raise ResultTooLargeError(
                f"fal stream from {self.app_id}, after {self.count} event(s): "
                + too_large_message(self._size, self._max_bytes, at_least=True)
            )

    def result(self) -> Any:
        """The collected value once the server has closed the stream normally."""
        if self.count == 0:
            raise FalStreamError(
                f"fal stream from {self.app_id} ended without sending any event; the app produced no result"
            )
        return self.events if self.collect == "all" else self.last


async def drain_stream(
    events: AsyncIterator[Any],
    on_event: Callable[[Any], None],
    *,
    app_id: str,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Feed every event to ``on_event`` under a whole-stream and an idle deadline; return the count.

    On a deadline the iterator is closed (which closes the HTTP response) and a retryable
    :class:`FalTimeoutError` says which limit was hit and how far the stream got.
    """
    deadline = clock() + timeout if timeout else None
    received = 0
    try:
        while True:
            waits = [w for w in (idle_timeout, deadline - clock() if deadline else None) if w is not None]
            wait = max(0.0, min(waits)) if waits else None
            try:
                event = await asyncio.wait_for(anext(events), wait)
            except StopAsyncIteration:
                return received
            except asyncio.TimeoutError:
                raise _deadline_error(app_id, received, timeout, idle_timeout, deadline, clock) from None
            received += 1
            on_event(event)
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


def _deadline_error(
    app_id: str,
    received: int,
    timeout: float | None,
    idle_timeout: float | None,
    deadline: float | None,
    clock: Callable[[], float],
) -> FalTimeoutError:
    if deadline is not None and clock() >= deadline - 1e-3:
        what = f"did not finish within timeout={timeout:g}s"
    else:
        what = f"sent no event for idle_timeout={idle_timeout:g}s"
    return FalTimeoutError(f"fal stream from {app_id} {what} (after {received} event(s))")


class FalStreamOperator(BaseOperator):
    """Stream an app's events into the task log and return its final event (or all of them).

    :param app_id: the fal app, e.g. ``fal-ai/any-llm``. Templated.
    :param arguments: the app's input. Templated.
    :param path: the streaming endpoint path (fal's convention is ``/stream``). Templated.
    :param collect: ``"final"`` returns the last event before the server closed the stream;
        ``"all"`` returns every event in order.
    :param select: field path(s) to keep (see :func:`fal_provider.results.shape_result`); with
        ``collect="all"`` it applies to each event.
    :param output_path: write the full result there and return a small manifest instead. Nothing
        is written unless the stream completes and ``select`` resolves.
    :param download_media: with ``output_path``, also copy the media files the result points at.
    :param max_xcom_bytes: refuse a result bigger than this (``None`` or ``0``: no limit).
    :param timeout: seconds the whole stream may take.
    :param idle_timeout: seconds allowed between two events.
    :param log_interval: at most one progress line per this many seconds (``0``: every event).
    :param fal_conn_id: the fal connection.
    :param headers: extra HTTP headers for the stream request. Templated.
    :param tags: request tags (``X-Fal-Tags``) besides ``airflow.dag`` / ``airflow.task``, which the
        stream request always carries (fal's rules are checked when the task is built).

    A stream that breaks before the server closes it raises a retryable ``FalStreamError``; an
    error event from the app fails the task with the app's message, without retries when the app
    marks it non-retryable (``"retryable": false`` or a permanent fal error type).
    """

    template_fields: Sequence[str] = ("app_id", "arguments", "path", "headers")
    template_fields_renderers = {"arguments": "json", "headers": "json"}
    ui_color = "#e8d7ff"

    def __init__(
        self,
        *,
        app_id: str,
        arguments: Mapping[str, Any] | None = None,
        path: str = "/stream",
        collect: Collect = "final",
        select: str | Sequence[str] | None = None,
        output_path: Any = None,
        download_media: bool = False,
        max_xcom_bytes: int | None = DEFAULT_MAX_XCOM_BYTES,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        log_interval: float = 5.0,
        fal_conn_id: str = "fal_default",
        headers: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tags = check_tags(tags)
        self._tag_headers: dict[str, str] = {}
        self.app_id = app_id
        self.arguments = arguments if arguments is not None else {}
        self.path = path
        self.collect = collect
        self.select = select
        self.output_path = output_path
        self.download_media = download_media
        self.max_xcom_bytes = max_xcom_bytes
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.log_interval = log_interval
        self.fal_conn_id = fal_conn_id
        self.headers = headers
        _check_settings(collect, timeout, idle_timeout, log_interval)
        self.max_xcom_bytes = check_result_rules(select, output_path, download_media, max_xcom_bytes)
        if not is_templated(headers):
            check_task_headers(headers)
        if not is_templated(self.arguments) and not isinstance(self.arguments, Mapping):
            raise FalInputError(_arguments_error(app_id, self.arguments))

    @cached_property
    def hook(self) -> FalHook:
        return FalHook(fal_conn_id=self.fal_conn_id)

    def execute(self, context: Any) -> Any:
        if not isinstance(self.arguments, Mapping):
            raise FalInputError(_arguments_error(self.app_id, self.arguments))
        check_task_headers(self.headers)
        check_rendered_result_rules(self.select, self.output_path)
        with input_errors():  # the hook's own parsers, before the paid POST
            check_submit(self.app_id, self.arguments, None)
        ti = context["ti"]
        tags = request_tags(getattr(ti, "dag_id", None), getattr(ti, "task_id", None), self.tags)
        self._tag_headers = {TAGS_HEADER: tags_header(tags)} if tags else {}
        collector = StreamCollector(
            self.app_id,
            collect=self.collect,
            progress=RateLimitedLog(self.log, self.log_interval),
            max_bytes=fetch_limit(self.select, self.output_path, self.max_xcom_bytes),
        )
        self.log.info("Streaming %s%s", self.app_id, self.path)
        started = time.monotonic()
        try:
            asyncio.run(self._consume(collector))
        except FalError as err:
            raise name_the_app(err, self.app_id, "fal stream from") from err
        self.log.info(
            "%s stream finished: %d event(s) in %.1fs; final event: %s",
            self.app_id,
            collector.count,
            time.monotonic() - started,
            preview(collector.last, 500),
        )
        return self._shape(collector.result(), context)

    async def _consume(self, collector: StreamCollector) -> None:
        # The HTTP read timeout must not undercut idle_timeout, or a slow gap would surface as
        # a broken stream; without idle_timeout the connection's timeout bounds the gap.
        read_timeout = self.idle_timeout + 5.0 if self.idle_timeout else None
        try:
            events = self.hook.astream(
                self.app_id,
                dict(self.arguments),
                path=self.path,
                headers={**(self.headers or {}), **self._tag_headers} or None,
                timeout=read_timeout,
            )
            await drain_stream(
                events,
                collector.feed,
                app_id=self.app_id,
                timeout=self.timeout,
                idle_timeout=self.idle_timeout,
            )
        finally:
            await self.hook.aclose_shared_client()  # this loop ends with the task; so does its client

    def _shape(self, value: Any, context: Any) -> Any:
        name = output_name(context, "stream")
        if self.collect == "all":
            return shape_items(value, name=name, fetch=self.hook.fetch_media, **result_rules(self))
        if self.select is not None and self.output_path is not None:
            select_fields(value, self.select)  # fail on a bad path before anything is written
        return shape_result(value, request_id=name, fetch=self.hook.fetch_media, **result_rules(self))


def _arguments_error(app_id: Any, arguments: Any) -> str:
    return (
        f"arguments for {app_id} must render to a mapping (the app's input fields), got "
        f"{type(arguments).__name__}.{TEMPLATE_HINT}"
    )


def _check_settings(
    collect: Any, timeout: float | None, idle_timeout: float | None, log_interval: float
) -> None:
    """Reject impossible settings when the DAG is parsed, not when the task runs."""
    if collect not in _COLLECT_MODES:
        raise FalInputError(f"collect must be 'final' or 'all', got {collect!r}")
    for name, value in (("timeout", timeout), ("idle_timeout", idle_timeout)):
        check_number(value, name, positive=True, allow_none=True)
    check_number(log_interval, "log_interval", minimum=0)
