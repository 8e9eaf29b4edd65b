"""Reading fal's server-sent event streams: the queue status stream and model ``/stream`` endpoints.

Both streams end by the server closing the connection. For the status stream that is only normal
after ``COMPLETED``; any other end raises :class:`FalStreamError` so a trigger can fall back to
polling. For model streams the events are model-specific JSON; a non-JSON event or a broken
connection is a :class:`FalStreamError` naming the app.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from fal_provider.exceptions import FalStreamError
from fal_provider.hooks._calls import Status, parse_status_response
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


def _status_from_event(event: ServerSentEvent, label: str) -> Status | None:
    if not event.data.strip():
        return None
    try:
        data = json.loads(event.data)
    except ValueError:
        raise FalStreamError(f"{label}: event is not JSON: {event.data[:120]!r}") from None
    try:
        return parse_status(data)
    except ValueError as err:
        raise FalStreamError(f"{label}: {err}") from None


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

    def read(self, event: ServerSentEvent) -> Status | None:
        status = _status_from_event(event, self.label)
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
            if (status := reader.read(event)) is not None:
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
        async for event in EventSource(response).aiter_sse():
            if (status := reader.read(event)) is not None:
                yield status
            if reader.completed:
                return
    except httpx.TransportError as exc:
        raise reader.broke(exc) from exc
    raise reader.ended_early()


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


__all__ = [
    "aiter_model_events",
    "aiter_status_events",
    "check_event_stream",
    "iter_model_events",
    "iter_status_events",
    "parse_status_response",
]
