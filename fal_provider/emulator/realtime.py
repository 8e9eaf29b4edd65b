"""Realtime WebSocket endpoint: ``/run/{app}/realtime`` with msgpack frames and fal's control frames.

Test controls (any realtime app, meant for ``emulator/realtime`` and ``emulator/echo``): query ``drop_after=N`` hangs up
abruptly after N replies; an input ``{"x_fal_error": "CODE"}`` answers with an ``x-fal-error`` frame;
``{"x_fal_message": ...}`` sends an ``x-fal-message`` frame before the echo; ``{"close": true}`` closes
normally (code 1000).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import MutableMapping
from typing import Any

import msgpack
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from fal_provider.emulator.apps import NAMESPACES, EmulatedApp, InputError
from fal_provider.emulator.auth import auth_error
from fal_provider.emulator.netfaults import abort_connection
from fal_provider.emulator.state import EmulatorState

POLICY_VIOLATION = 1008
NOT_FOUND_CLOSE = 4404


def app_alias(path: str) -> str:
    segments = [s for s in path.strip("/").split("/") if s]
    return segments[2] if segments and segments[0] in NAMESPACES and len(segments) > 2 else segments[1]


async def _refuse(websocket: WebSocket, error: str, reason: str, code: int) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "x-fal-error", "error": error, "reason": reason}))
    await websocket.close(code=code, reason=reason[:120])


def _authorised(state: EmulatorState, websocket: WebSocket, path: str) -> str | None:
    """None when allowed, else the refusal reason (JWT from /rest/tokens/ or a Key header)."""
    token = websocket.query_params.get("fal_jwt_token")
    if token:
        claims = state.signer.verify(token)
        if claims is None or claims.get("scope") != "realtime":
            return "Invalid or expired token"
        if app_alias(path) not in claims.get("allowed_apps", []):
            return "Token is not valid for this app"
        return None
    return auth_error(websocket.headers.get("authorization"), state.config.key)


def realtime_routes(state: EmulatorState) -> list[WebSocketRoute]:
    async def session(websocket: WebSocket) -> None:
        path = websocket.path_params["path"]
        refusal = _authorised(state, websocket, path) if len(path.strip("/").split("/")) >= 2 else "Bad path"
        if refusal is not None:
            await _refuse(websocket, "Unauthorized", refusal, POLICY_VIOLATION)
            return
        resolved = state.registry.resolve(path)
        if resolved is None or resolved[1] != "realtime" or not resolved[0].has_realtime:
            await _refuse(websocket, "NOT_FOUND", f"No realtime endpoint at '{path}'", NOT_FOUND_CLOSE)
            return
        buffering = websocket.query_params.get("max_buffering")
        if buffering is not None and not (buffering.isdigit() and 1 <= int(buffering) <= 60):
            await _refuse(websocket, "BAD_REQUEST", "max_buffering must be 1..60", POLICY_VIOLATION)
            return
        state.stats.incr("realtime_sessions")
        await websocket.accept()
        await _serve(state, websocket, resolved[0])

    return [WebSocketRoute("/run/{path:path}", session)]


async def _serve(state: EmulatorState, websocket: WebSocket, app: EmulatedApp) -> None:
    drop_after = websocket.query_params.get("drop_after")
    limit = int(drop_after) if drop_after and drop_after.isdigit() else None
    context = state.context(str(uuid.uuid4()), state.base_url(websocket))
    replies = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            state.stats.incr("realtime_messages")
            decoded = _decode(message)
            if isinstance(decoded, dict) and await _control(websocket, decoded):
                if decoded.get("close"):
                    return
                continue
            try:
                reply = await app.realtime_reply(context, decoded)
            except InputError as exc:
                await websocket.send_text(json.dumps(_input_error_frame(exc)))
                continue
            await websocket.send_bytes(msgpack.packb(reply, use_bin_type=True))
            replies += 1
            if limit is not None and replies >= limit:
                abort_connection(websocket.scope)
                return
    except WebSocketDisconnect:
        return


def _input_error_frame(exc: InputError) -> dict[str, str]:
    """Invalid input to a model: an ``INTERNAL_ERROR`` frame naming the field; the session stays open."""
    first = exc.details[0] if exc.details else {}
    field = ".".join(str(part) for part in first.get("loc", [])[1:])
    return {
        "type": "x-fal-error",
        "error": "INTERNAL_ERROR",
        "reason": f"{field}: {first.get('msg', 'invalid input')}",
    }


def _decode(message: MutableMapping[str, Any]) -> Any:
    if message.get("bytes") is not None:
        return msgpack.unpackb(message["bytes"], raw=False)
    text = message.get("text") or ""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"text": text}


async def _control(websocket: WebSocket, message: dict[str, Any]) -> bool:
    """Handle test controls; True when the message was fully consumed."""
    if "x_fal_error" in message:
        frame = {"type": "x-fal-error", "error": str(message["x_fal_error"]), "reason": "requested by input"}
        await websocket.send_text(json.dumps(frame))
        return True
    if message.get("close"):
        await websocket.close(code=1000)
        return True
    if "x_fal_message" in message:
        frame = {"type": "x-fal-message", "action": "emulator", "payload": message["x_fal_message"]}
        await websocket.send_text(json.dumps(frame))
    return False
