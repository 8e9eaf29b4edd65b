"""Emulator control endpoints under ``/_emulator`` (not part of fal; no auth)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fal_provider.emulator.faults import FaultConfig
from fal_provider.emulator.state import EmulatorState
from fal_provider.emulator.validation import InvalidSettings


class _BadBody(Exception):
    """A control body that is not JSON at all."""


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadBody from None


def _refused(exc: InvalidSettings | _BadBody) -> JSONResponse:
    """400 with every bad field and why; the caller has changed nothing."""
    if isinstance(exc, _BadBody):
        errors = [{"field": "(body)", "message": "body is not valid JSON", "type": "json_invalid"}]
        return JSONResponse({"detail": "Invalid JSON body", "errors": errors}, status_code=400)
    return JSONResponse({"detail": str(exc), "errors": exc.errors}, status_code=400)


def admin_routes(state: EmulatorState) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        data = state.stats.snapshot(state.engine.counts_by_state())
        data["outstanding"] = {"now": state.engine.outstanding, "peak": state.engine.peak_outstanding}
        return JSONResponse(data)

    async def reset(request: Request) -> Response:
        await state.reset()
        return JSONResponse({"status": "reset"})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.faults = FaultConfig.from_json(await _json_body(request))
            except (InvalidSettings, _BadBody) as exc:
                return _refused(exc)
        return JSONResponse(state.faults.to_json())

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.config.update(await _json_body(request))
            except (InvalidSettings, _BadBody) as exc:
                return _refused(exc)
            state.engine.pump_all()
        return JSONResponse(state.config.public_view())

    async def request_info(request: Request) -> Response:
        record = state.engine.requests.get(request.path_params["request_id"])
        if record is None:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        return JSONResponse(record.debug_view())

    async def request_list(request: Request) -> Response:
        items = [
            {"request_id": r.request_id, "app_id": r.app_id, "state": r.state}
            for r in state.engine.requests.values()
        ]
        return JSONResponse({"requests": items})

    async def apps(request: Request) -> Response:
        items = [
            {
                "app_id": app.app_id,
                "description": app.description,
                "stream": app.has_stream,
                "realtime": app.has_realtime,
            }
            for app in state.registry.all()
        ]
        return JSONResponse({"apps": items})

    async def billing(request: Request) -> Response:
        """The billed total (optionally of the events with tags ``?tag=key=value``) and the events."""
        tags = dict(tag.partition("=")[::2] for tag in request.query_params.getlist("tag"))
        events = [
            e.to_json()
            for e in state.ledger.events.values()
            if all(e.tags.get(k) == v for k, v in tags.items())
        ]
        return JSONResponse(
            {"total": state.ledger.total(tags), "currency": "USD", "count": len(events), "events": events}
        )

    async def deprecate(request: Request) -> Response:
        """Mark a model deprecated in the catalogue (``{"endpoint_id", "replacement"}``)."""
        try:
            body = await _json_body(request)
        except _BadBody as exc:
            return _refused(exc)
        if not isinstance(body, dict) or not isinstance(body.get("endpoint_id"), str):
            return JSONResponse({"detail": "expected {endpoint_id, replacement}"}, status_code=400)
        replacement = body.get("replacement")
        state.ledger.deprecations[body["endpoint_id"]] = replacement if isinstance(replacement, str) else None
        return JSONResponse({"deprecated": dict(state.ledger.deprecations)})

    return [
        Route("/_emulator/billing", billing, methods=["GET"]),
        Route("/_emulator/deprecations", deprecate, methods=["POST"]),
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/faults", faults, methods=["GET", "POST"]),
        Route("/_emulator/config", config, methods=["GET", "POST"]),
        Route("/_emulator/requests", request_list, methods=["GET"]),
        Route("/_emulator/requests/{request_id}", request_info, methods=["GET"]),
        Route("/_emulator/apps", apps, methods=["GET"]),
    ]
