"""Emulator control endpoints under ``/_emulator`` (not part of fal; no auth)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fal_provider.emulator.faults import FaultConfig
from fal_provider.emulator.state import EmulatorState


def admin_routes(state: EmulatorState) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats.snapshot(state.engine.counts_by_state()))

    async def reset(request: Request) -> Response:
        await state.reset()
        return JSONResponse({"status": "reset"})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.faults = FaultConfig.from_json(await request.json())
            except (TypeError, ValueError) as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(state.faults.to_json())

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.config.update(await request.json())
            except (TypeError, ValueError) as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)
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

    return [
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/faults", faults, methods=["GET", "POST"]),
        Route("/_emulator/config", config, methods=["GET", "POST"]),
        Route("/_emulator/requests", request_list, methods=["GET"]),
        Route("/_emulator/requests/{request_id}", request_info, methods=["GET"]),
        Route("/_emulator/apps", apps, methods=["GET"]),
    ]
