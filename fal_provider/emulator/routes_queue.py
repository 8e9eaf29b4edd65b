"""fal's queue host (``queue.fal.run``) under ``/queue``: submit, status, status stream, result, cancel."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fal_provider.emulator.apps import base_path
from fal_provider.emulator.queue import COMPLETED, IN_QUEUE, QueuedRequest, QueueFull
from fal_provider.emulator.state import EmulatorState

TRUE_VALUES = ("1", "true", "yes")


def parse_request_path(path: str) -> tuple[str, str, list[str]] | None:
    """``prefix/requests/{id}/action...`` → (prefix, id, action); None for a submit path."""
    segments = [s for s in path.strip("/").split("/") if s]
    for index in range(2, len(segments) - 1):
        if segments[index] == "requests":
            return "/".join(segments[:index]), segments[index + 1], segments[index + 2 :]
    return None


def urls(request: QueuedRequest) -> dict[str, str]:
    base = f"{request.base_url}/queue/{base_path(request.endpoint_id)}/requests/{request.request_id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


def status_body(
    state: EmulatorState, request: QueuedRequest, with_logs: bool, logs_from: int = 0
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": request.state, "request_id": request.request_id, **urls(request)}
    body["logs"] = request.logs[logs_from:] if with_logs else None
    if request.state == IN_QUEUE:
        body["queue_position"] = state.engine.position(request)
    if request.state == COMPLETED:
        started = request.started_at or request.completed_at or 0.0
        body["metrics"] = {"inference_time": round((request.completed_at or started) - started, 6)}
        if request.error is not None or request.error_type is not None:
            body["error"] = request.error
            body["error_type"] = request.error_type
    return body


def expired(state: EmulatorState, record: QueuedRequest) -> bool:
    """Past fal's retention: 1 hour after completion, 6 minutes for a result of 10 KB or more."""
    if record.completed_at is None or record.response is None:
        return False
    size = len(json.dumps(record.response.body, default=str))
    return time.time() - record.completed_at > state.config.result_ttl(size)


def _json(body: Any, status_code: int = 200, request_id: str | None = None, **headers: str) -> JSONResponse:
    if request_id:
        headers["x-fal-request-id"] = request_id
    return JSONResponse(body, status_code=status_code, headers=headers)


# (method, action after the request id) → the endpoint name faults and stats use.
REQUEST_ACTIONS = {
    ("GET", ("status",)): "status",
    ("GET", ("status", "stream")): "status_stream",
    ("GET", ()): "result",
    ("GET", ("response",)): "result",
    ("PUT", ("cancel",)): "cancel",
}
_CALL_COUNTERS = {"status_stream": "status_stream_calls", "result": "result_calls", "cancel": "cancels"}


def count_call(state: EmulatorState, endpoint: str, request_id: str) -> None:
    """Count a request-scoped call (before the lookup, so unknown ids are counted too)."""
    if endpoint == "status":
        state.stats.status_call(request_id)
    else:
        state.stats.incr(_CALL_COUNTERS[endpoint])


def _parse_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def queue_routes(state: EmulatorState) -> list[Route]:
    async def dispatch(request: Request) -> Response:
        path = request.path_params["path"]
        parsed = parse_request_path(path)
        if parsed is None:
            if request.method != "POST":
                return _json({"detail": "Method Not Allowed"}, 405)
            return await submit(request, path)
        prefix, request_id, action = parsed
        endpoint = REQUEST_ACTIONS.get((request.method, tuple(action)))
        if endpoint is None:
            return _json({"detail": "Not Found"}, 404)
        record = state.engine.requests.get(request_id)
        if record is not None and base_path(prefix) != base_path(record.endpoint_id):
            record = None
        denied = await state.gate(request, endpoint, record.app_id if record else None)
        if denied is not None:
            return denied
        count_call(state, endpoint, request_id)
        if record is None:
            body = (
                {"status": "NOT_FOUND"}
                if endpoint == "cancel"
                else {"detail": f"Request {request_id} not found"}
            )
            return _json(body, 404)
        return await handlers[endpoint](request, record)

    async def submit(request: Request, path: str) -> Response:
        resolved = state.registry.resolve(path)
        app_id = resolved[0].app_id if resolved else None
        denied = await state.gate(request, "submit", app_id)
        if denied is not None:
            return denied
        if resolved is None:
            return _json({"detail": f"Application '{path.strip('/')}' not found"}, 404)
        app, sub_path = resolved
        try:
            raw = await request.body()
            arguments = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            detail = [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]
            return _json({"detail": detail}, 422)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        start_timeout = _parse_float(request.headers.get("x-fal-request-start-timeout"))
        if start_timeout is None:
            start_timeout = _parse_float(request.headers.get("x-fal-request-timeout"))
        max_len = request.query_params.get("fal_max_queue_length")
        record = QueuedRequest(
            request_id=state.engine.new_id(),
            endpoint_id=app.app_id,
            app=app,
            path=sub_path,
            arguments=arguments,
            base_url=state.base_url(request),
            headers=headers,
            priority="low" if request.headers.get("x-fal-queue-priority", "").lower() == "low" else "normal",
            webhook_url=request.query_params.get("fal_webhook"),
            start_timeout=start_timeout,
        )
        try:
            state.engine.submit(record, int(max_len) if max_len and max_len.isdigit() else None)
        except QueueFull as exc:
            return _json({"detail": str(exc)}, 429)
        state.stats.submits[app.app_id] += 1
        body = {
            "status": IN_QUEUE,  # fal always acknowledges a submit as queued, even if it starts at once
            "request_id": record.request_id,
            "gateway_request_id": record.request_id,
            "queue_position": state.engine.position(record) if record.state == IN_QUEUE else 0,
            **urls(record),
        }
        return _json(body, 200, record.request_id)

    async def status(request: Request, record: QueuedRequest) -> Response:
        with_logs = request.query_params.get("logs", "0").lower() in TRUE_VALUES
        code = 200 if record.state == COMPLETED else 202
        return _json(status_body(state, record, with_logs), code, record.request_id)

    async def status_stream(request: Request, record: QueuedRequest) -> Response:
        with_logs = request.query_params.get("logs", "0").lower() in TRUE_VALUES
        return StreamingResponse(
            stream_events(state, record, with_logs),
            media_type="text/event-stream",
            headers={"x-fal-request-id": record.request_id, "Cache-Control": "no-store"},
        )

    async def result(request: Request, record: QueuedRequest) -> Response:
        if record.state != COMPLETED or record.response is None:
            return _json({"detail": "Request is still in progress"}, 400, record.request_id)
        response = record.response
        if expired(state, record):
            state.stats.incr("expired_results")
            return _json({"detail": f"Request {record.request_id} not found"}, 404)
        return _json(response.body, response.status_code, record.request_id, **response.headers)

    async def cancel(request: Request, record: QueuedRequest) -> Response:
        if not state.engine.cancel(record):
            return _json({"status": "ALREADY_COMPLETED"}, 400, record.request_id)
        return _json({"status": "CANCELLATION_REQUESTED"}, 202, record.request_id)

    handlers: dict[str, Callable[[Request, QueuedRequest], Awaitable[Response]]] = {
        "status": status,
        "status_stream": status_stream,
        "result": result,
        "cancel": cancel,
    }

    return [Route("/queue/{path:path}", dispatch, methods=["GET", "POST", "PUT"])]


async def stream_events(state: EmulatorState, record: QueuedRequest, with_logs: bool) -> AsyncIterator[str]:
    """SSE: an event on every change (new logs sent as deltas), ``: ping`` while idle, close when done."""
    last_sent: str | None = None
    logs_sent = 0
    while True:
        changed = record.changed
        body = status_body(state, record, with_logs, logs_sent)
        log_count = len(record.logs) if with_logs else 0
        comparable = json.dumps({**body, "logs": log_count}, sort_keys=True)
        if comparable != last_sent:
            last_sent = comparable
            logs_sent = len(record.logs)
            yield f"data: {json.dumps(body)}\n\n"
        if record.state == COMPLETED:
            return
        if not await _changed_within(changed, state.config.ping_interval_s):
            yield ": ping\n\n"


async def _changed_within(changed: asyncio.Event, seconds: float) -> bool:
    """Whether ``changed`` is set within ``seconds``. ``asyncio.timeout`` where there is one
    (3.11+): ``wait_for`` makes a task per wait, and 10,000 open streams woken within a second by
    their completions spent the emulator's core on those tasks."""
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(seconds):
                await changed.wait()
        else:  # pragma: no cover - Python 3.10
            await asyncio.wait_for(changed.wait(), timeout=seconds)
    except (asyncio.TimeoutError, TimeoutError):
        return False
    return True
