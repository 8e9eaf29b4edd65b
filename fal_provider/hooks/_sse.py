"""Reading fal's server-sent event streams: the queue status stream and model ``/stream`` endpoints.

Both streams end by the server closing the connection. For the status stream that is only normal
after ``COMPLETED``; any other end raises :class:`FalStreamError` so a trigger can fall back to
polling. For model streams the events are model-specific JSON; a non-JSON event or a broken
connection is a :class:`FalStreamError` naming the app, and :func:`stream_error_from_event` tells
which events are the app reporting an error (fal fixes no schema for them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from fal_provider.exceptions import (
    PERMANENT_ERROR_TYPES,
    FalError,
    FalPermanentRequestFailed,
    FalRequestFailed,
    FalStreamError,
)
from fal_provider.hooks._calls import Status
from fal_provider.hooks._transport import LaneBody
from fal_provider.models import CompletedStatus, parse_status


def check_event_stream(response: httpx.Response, label: str) -> None:
    """A 2xx answer that is not an event stream cannot be read as one."""
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        raise FalStreamError(
            f"{label}: expected an event stream, got HTTP {response.status_code} "
            f"with content type {content_type or 'none'!r}",
            http_status=response.status_code,
        )


def _status_from_data(data: str, label: str) -> Status | None:
    if not data.strip():
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        raise FalStreamError(f"{label}: event is not JSON: {data[:120]!r}") from None
    try:
        return parse_status(parsed)
    except ValueError as err:
        raise FalStreamError(f"{label}: {err}") from None


async def _lane_event_data(body: LaneBody) -> AsyncGenerator[str, None]:
    """The ``data`` of each event of an event stream read off a lane connection (WHATWG rules: lines
    end in CRLF, LF or CR; ``data:`` lines join with LF; a blank line ends an event; comments and other
    fields are skipped). One generator over the socket's bytes, closed by its reader."""
    pending = b""
    data: list[str] = []
    while chunk := await body.next_chunk():
        pending += chunk
        lines = pending.splitlines(keepends=True)
        # A last line without its end waits for more bytes; so does a lone CR (LF may follow).
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for raw in lines:
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
                continue
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)


def _model_event(event: ServerSentEvent, label: str) -> Any:
    try:
        return json.loads(event.data)
    except ValueError:
        raise FalStreamError(f"{label}: event is not JSON: {event.data[:120]!r}") from None


class _StatusReader:
    """Turns status events into statuses, and knows whether the stream may end now."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.completed = False

    def read(self, data: str) -> Status | None:
        status = _status_from_data(data, self.label)
        self.completed = isinstance(status, CompletedStatus)
        return status

    def broke(self, exc: httpx.TransportError) -> FalStreamError:
        return FalStreamError(f"{self.label} broke: {type(exc).__name__}")

    def ended_early(self) -> FalStreamError:
        return FalStreamError(f"{self.label} ended before the request COMPLETED; poll the status instead")


def iter_status_events(response: httpx.Response, label: str) -> Iterator[Status]:
    check_event_stream(response, label)
    reader = _StatusReader(label)
    try:
        for event in EventSource(response).iter_sse():
            if (status := reader.read(event.data)) is not None:
                yield status
            if reader.completed:
                return
    except httpx.TransportError as exc:
        raise reader.broke(exc) from exc
    raise reader.ended_early()


async def aiter_status_events(response: httpx.Response, label: str) -> AsyncIterator[Status]:
    check_event_stream(response, label)
    reader = _StatusReader(label)
    try:
        async with aclosing(_event_data(response)) as events:
            async for data in events:
                if (status := reader.read(data)) is not None:
                    yield status
                if reader.completed:
                    return
    except httpx.TransportError as exc:
        raise reader.broke(exc) from exc
    raise reader.ended_early()


def _event_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """Each event's data: straight off the wire lane's connection when the answer came by it
    (thousands of status streams end on one loop at once), else through ``httpx_sse``."""
    body = response.stream
    if isinstance(body, LaneBody) and "content-encoding" not in response.headers:
        return _lane_event_data(body)
    return _sse_data(response)


async def _sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    async for event in EventSource(response).aiter_sse():
        yield event.data


def iter_model_events(response: httpx.Response, label: str) -> Iterator[Any]:
    check_event_stream(response, label)
    try:
        for event in EventSource(response).iter_sse():
            yield _model_event(event, label)
    except httpx.TransportError as exc:
        raise FalStreamError(f"{label} broke mid-stream: {type(exc).__name__}") from exc


async def aiter_model_events(response: httpx.Response, label: str) -> AsyncIterator[Any]:
    check_event_stream(response, label)
    try:
        async for event in EventSource(response).aiter_sse():
            yield _model_event(event, label)
    except httpx.TransportError as exc:
        raise FalStreamError(f"{label} broke mid-stream: {type(exc).__name__}") from exc


def preview(value: Any, limit: int = 200) -> str:
    """A one-line, bounded rendering of an event (for a log line or an error message)."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _first(fields: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return next((fields[name] for name in names if fields.get(name)), None)


def _error_text(error: Any, event: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(message, error type found inside the error)`` of an error event."""
    if isinstance(error, Mapping):
        return _first(error, ("message", "msg", "detail")) or preview(error, 500), _first(
            error, ("type", "error_type")
        )
    if error:
        return (error if isinstance(error, str) else preview(error, 500)), None
    return _first(event, ("message", "detail")) or preview(event, 500), None


def error_in_event(event: Any) -> tuple[str, str | None, bool | None] | None:
    """``(message, error_type, retryable)`` if a stream event reports an app error, else ``None``.

    fal does not fix an event schema, so this recognises the shapes apps actually send: a truthy
    ``error`` field (``{"error": "...", "error_type": "..."}``; LLM apps send ``"error": null`` on
    good events, which is not an error) and the workflow endpoints' ``{"type": "error", ...}``.
    ``retryable`` is the app's own verdict when it gives one (``retryable`` field), else ``None``.
    """
    if not isinstance(event, Mapping):
        return None
    error = event.get("error")
    if not error and event.get("type") != "error":
        return None
    message, inner_type = _error_text(error, event)
    error_type = event.get("error_type") or inner_type
    retryable = event.get("retryable")
    return (
        str(message),
        (str(error_type) if error_type else None),
        (retryable if isinstance(retryable, bool) else None),
    )


def stream_error_from_event(app_id: str, event: Any, index: int) -> FalError | None:
    """The error to raise for an error event: permanent when the app or its error type says so."""
    found = error_in_event(event)
    if found is None:
        return None
    message, error_type, retryable = found
    text = f"fal stream from {app_id} reported an error at event {index}"
    text += f" ({error_type})" if error_type else ""
    text += f": {message}"
    permanent = retryable is False or (retryable is None and error_type in PERMANENT_ERROR_TYPES)
    cls = FalPermanentRequestFailed if permanent else FalRequestFailed
    return cls(text, error_type=error_type, detail=dict(event))
