"""The ``emulator/*`` apps: small, exactly specified behaviours for tests (see README.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fal_provider.emulator.apps.base import (
    AppResponse,
    EmulatedApp,
    InputError,
    RunContext,
    StreamAbort,
    as_int,
    as_number,
    field_error,
)

PAYLOAD_ERROR_TEXT = "Failed to serialize the response payload (emulated)"


class EchoApp(EmulatedApp):
    """Returns its arguments; optionally stays IN_PROGRESS for ``duration_s`` emitting ``log_lines``."""

    app_id = "emulator/echo"
    description = "Echoes its input; duration_s, log_lines, webhook_payload_error."
    has_realtime = True

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        duration = as_number(arguments, "duration_s", 0.0)
        lines = as_int(arguments, "log_lines", 0)
        await emit_logs_over(ctx, duration, lines)
        payload_error = PAYLOAD_ERROR_TEXT if arguments.get("webhook_payload_error") else None
        return AppResponse(200, arguments, webhook_payload_error=payload_error)

    async def realtime_reply(self, ctx: RunContext, message: Any) -> Any:
        return message


async def emit_logs_over(ctx: RunContext, duration: float, lines: int) -> None:
    """Spread ``lines`` log entries evenly over ``duration`` seconds (unscaled: tests chose it)."""
    if lines <= 0:
        await ctx.sleep(duration, scaled=False)
        return
    step = duration / lines
    for index in range(lines):
        await ctx.sleep(step, scaled=False)
        ctx.log(f"log line {index + 1} of {lines}")


class FailApp(EmulatedApp):
    """Fails the way fal fails: model validation (422), runner disconnect (503) or server error (500);
    ``kind="none"`` succeeds, so one batch can mix good and bad inputs."""

    app_id = "emulator/fail"
    description = "Fails by kind: validation | runner | server | none (succeeds)."

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        await ctx.sleep(as_number(arguments, "duration_s", 0.0), scaled=False)
        kind = arguments.get("kind", "server")
        if kind == "none":
            return AppResponse(200, arguments)
        if kind == "validation":
            detail = [
                field_error("prompt", "Emulated validation failure", "value_error", arguments.get("prompt"))
            ]
            return AppResponse(422, {"detail": detail}, {"X-Fal-Retryable": "false"})
        if kind == "runner":
            body = {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
            return AppResponse(503, body, {"X-Fal-Error-Type": "runner_disconnected"})
        if kind == "server":
            body = {"detail": "Internal server error", "error_type": "runner_server_error"}
            return AppResponse(500, body, {"X-Fal-Error-Type": "runner_server_error"})
        raise InputError(
            [field_error("kind", "Input should be 'validation', 'runner', 'server' or 'none'", "enum", kind)]
        )


class StreamApp(EmulatedApp):
    """Emits ``count`` progress events then a final one; inputs break the stream on purpose."""

    app_id = "emulator/stream"
    description = "Progress events over SSE; break_after, error_at, idle_s."
    has_stream = True

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        final: dict[str, Any] = {}
        async for event in self.stream(ctx, {**arguments, "break_after": None, "error_at": None}):
            final = event
        return AppResponse(200, final)

    async def stream(self, ctx: RunContext, arguments: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        count = as_int(arguments, "count", 3)
        interval = as_number(arguments, "interval_s", 0.01)
        idle = as_number(arguments, "idle_s", 0.0)
        break_after = arguments.get("break_after")
        error_at = arguments.get("error_at")
        for index in range(1, count + 1):
            await asyncio.sleep(interval)
            if error_at is not None and index == int(error_at):
                yield {"error": f"Emulated stream error at event {index}", "error_type": "stream_error"}
                return
            yield {"progress": index, "count": count}
            if break_after is not None and index >= int(break_after):
                raise StreamAbort()
        if idle > 0:
            await asyncio.sleep(idle)
        yield {"done": True, "count": count, "output": f"streamed {count} events"}


class RealtimeApp(EmulatedApp):
    """Realtime echo; query ``drop_after`` and in-band control keys break it (see realtime.py)."""

    app_id = "emulator/realtime"
    description = "Realtime msgpack echo with test controls; queue/run echo."
    has_realtime = True

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        return AppResponse(200, arguments)

    async def realtime_reply(self, ctx: RunContext, message: Any) -> Any:
        return message if isinstance(message, dict) else {"payload": message}
