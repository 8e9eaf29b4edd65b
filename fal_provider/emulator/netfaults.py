"""Low-level connection tricks: dropping a connection, or losing an answer the handler already gave.

ASGI has no "hang up" message, so the outermost wrapper stores uvicorn's own ``send`` in the
scope; its owner holds the asyncio transport, which we abort. Other servers fall back to raising.
The same wrapper gives every HTTP call a :class:`AnswerSlot`: a fault that fires "after accept"
marks it, the handler runs as usual, and its answer is swapped for a reset or a gateway page.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RAW_SEND_KEY = "fal_emulator.raw_send"
ANSWER_SLOT_KEY = "fal_emulator.answer_slot"

NGINX_BODY = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
NGINX_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


def nginx_page(code: int) -> str:
    """The HTML an nginx ingress answers with when fal behind it failed or never answered."""
    return NGINX_BODY.format(code=code, reason=NGINX_REASONS[code])


class AnswerSlot:
    """Per-call switch: once ``lose_with`` is set, the handler's answer never reaches the client."""

    def __init__(self) -> None:
        self.lose_with: str | None = None
        #: Seconds the answer is held back before it is sent (or lost).
        self.hold_s = 0.0

    def wrap(self, scope: Scope, send: Send) -> Send:
        replaced = False

        async def send_or_lose(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and self.hold_s > 0:
                hold, self.hold_s = self.hold_s, 0.0
                await asyncio.sleep(hold)
            if self.lose_with is None:
                await send(message)
            elif not replaced and message["type"] == "http.response.start":
                replaced = True
                await _lose_answer(self.lose_with, scope, send)
            # Anything else of the real answer (its body, the rest of a stream) is swallowed.

        return send_or_lose


async def _lose_answer(how: str, scope: Scope, send: Send) -> None:
    if how == "drop":
        if not abort_connection(scope):
            raise ConnectionAbortedError("emulated dropped connection")
        return
    body = nginx_page(int(how)).encode()
    headers = [
        (b"content-type", b"text/html"),
        (b"content-length", str(len(body)).encode()),
        # The swallowed answer may still be streaming; a fresh connection keeps the next call clean.
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": int(how), "headers": headers})
    await send({"type": "http.response.body", "body": body})


def answer_slot(scope: Scope) -> AnswerSlot | None:
    slot = scope.get(ANSWER_SLOT_KEY)
    return slot if isinstance(slot, AnswerSlot) else None


class CaptureRawSend:
    """Outermost ASGI wrapper: remembers the server's send callable, and can lose the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[RAW_SEND_KEY] = send
        if scope["type"] == "http":
            slot = AnswerSlot()
            scope[ANSWER_SLOT_KEY] = slot
            send = slot.wrap(scope, send)
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
