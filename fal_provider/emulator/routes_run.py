"""fal's run host (``fal.run``) under ``/run``: synchronous calls and ``/stream`` SSE."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from fal_provider.emulator.apps import EmulatedApp, InputError, StreamAbort
from fal_provider.emulator.billing import RunRecord
from fal_provider.emulator.netfaults import abort_connection
from fal_provider.emulator.state import EmulatorState


def _sse(event: Any) -> str:
    return f"data: {json.dumps(event)}\n\n"


def run_routes(state: EmulatorState) -> list[Route]:
    async def dispatch(request: Request) -> Response:
        path = request.path_params["path"]
        resolved = state.registry.resolve(path)
        is_stream = resolved is not None and resolved[1].split("/")[-1:] == ["stream"]
        app_id = resolved[0].app_id if resolved else None
        denied = await state.gate(request, "stream" if is_stream else "run", app_id)
        if denied is not None:
            return denied
        if resolved is None:
            return JSONResponse({"detail": f"Application '{path.strip('/')}' not found"}, status_code=404)
        app, sub_path = resolved
        arguments = await _arguments(request)
        if isinstance(arguments, Response):
            return arguments
        request_id = str(uuid.uuid4())
        if is_stream:
            state.stats.incr("stream_calls")
            if not app.has_stream:
                detail = f"Application '{app.app_id}' has no streaming endpoint (/stream)"
                return JSONResponse({"detail": detail}, status_code=404)
            return await _stream(state, app, arguments, request, request_id)
        state.stats.incr("runs")
        context = state.context(request_id, state.base_url(request))
        started = time.time()
        try:
            result = await app.call(context, arguments, sub_path)
        except InputError as exc:
            result = exc.response()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        record = RunRecord(request_id, app.app_id, arguments, headers, started, started, time.time(), result)
        state.ledger.runs.append(record)
        state.ledger.bill(request_id, app.app_id, arguments, result, time.time() - started, headers)
        headers = {**result.headers, "x-fal-request-id": request_id}
        return JSONResponse(result.body, status_code=result.status_code, headers=headers)

    return [Route("/run/{path:path}", dispatch, methods=["GET", "POST"])]


async def _arguments(request: Request) -> dict[str, Any] | Response:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        detail = [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return value if isinstance(value, dict) else {"input": value}


async def _stream(
    state: EmulatorState, app: EmulatedApp, arguments: dict[str, Any], request: Request, request_id: str
) -> Response:
    """Validate by pulling the first event before answering, so bad input is a plain 422."""
    context = state.context(request_id, state.base_url(request))
    events = app.stream(context, arguments).__aiter__()
    try:
        first = await events.__anext__()
    except InputError as exc:
        error = exc.response()
        return JSONResponse(error.body, status_code=error.status_code, headers=error.headers)
    except StopAsyncIteration:
        first = None
    return StreamingResponse(
        _relay(first, events, request.scope),
        media_type="text/event-stream",
        headers={"x-fal-request-id": request_id, "Cache-Control": "no-store"},
    )


async def _relay(first: Any, events: AsyncIterator[Any], scope: Scope) -> AsyncIterator[str]:
    if first is None:
        return
    yield _sse(first)
    try:
        async for event in events:
            yield _sse(event)
    except StreamAbort:
        if not abort_connection(scope):
            raise
