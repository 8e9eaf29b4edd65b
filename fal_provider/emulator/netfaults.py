"""Low-level connection tricks: dropping a connection without (or in the middle of) a response.

ASGI has no "hang up" message, so the outermost wrapper stores uvicorn's own ``send`` in the
scope; its owner holds the asyncio transport, which we abort. Other servers fall back to raising.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

RAW_SEND_KEY = "fal_emulator.raw_send"


class CaptureRawSend:
    """Outermost ASGI wrapper: remembers the server's send callable for ``abort_connection``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[RAW_SEND_KEY] = send
        await self.app(scope, receive, send)


def abort_connection(scope: Scope) -> bool:
    """Reset the TCP connection now; False when the server does not expose its transport."""
    owner: Any = getattr(scope.get(RAW_SEND_KEY), "__self__", None)
    transport = getattr(owner, "transport", None)
    if not isinstance(transport, asyncio.Transport):
        return False
    transport.abort()
    return True


class DropConnection:
    """ASGI response that hangs up without sending anything."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not abort_connection(scope):
            raise ConnectionAbortedError("emulated dropped connection")


class DropMidResponse:
    """ASGI response that sends headers and half a body, then hangs up."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b'{"detail": "this response is cut short by an emulated fault and never ends"}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": body[:20], "more_body": True})
        await asyncio.sleep(0.01)
        if not abort_connection(scope):
            raise ConnectionAbortedError("emulated dropped connection")
