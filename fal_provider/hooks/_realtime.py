"""fal realtime sessions: a WebSocket carrying msgpack frames to one app, many inputs per session.

The key never travels on the WebSocket: the hook first asks the REST API for a short-lived token
scoped to the app, and the session connects with ``?fal_jwt_token=...`` as fal's client does.
Incoming text frames are control messages: ``x-fal-error`` raises a typed error
(:func:`frame_error`: ``NOT_FOUND`` a :class:`FalNotFoundError`, ``Unauthorized`` a
:class:`FalAuthError`, anything else a :class:`FalRealtimeError`), ``x-fal-message`` (timings and
the like) is skipped.

Token lifetime (``token_expiration``, default 120 s): fal-js renews its token at 90 % of that lifetime
because it reconnects with it. Here a token serves exactly one handshake. fal (and the emulator,
``emulator/realtime.py``) checks it only when the WebSocket opens, so an open session outlives its
token; there is no reconnect inside a session (a dropped socket raises ``FalStreamError``), and every
opening, including a reconnect (``FalHook.arealtime_batch`` opens a new ``arealtime()``), builds
a new :class:`RealtimeOpening` and so fetches a fresh token. Nothing caches a token or a token URL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgpack
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection

from fal_provider.exceptions import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalInputError,
    FalNotFoundError,
    FalRealtimeError,
    FalStreamError,
    FalTimeoutError,
)
from fal_provider.hooks._calls import USER_AGENT, CallBuilder, check_msgpack
from fal_provider.hooks._transport import Call, origin_of
from fal_provider.models import AppId, check_path

#: fal's accepted range for ``max_buffering``.
MAX_BUFFERING_RANGE = (1, 60)
OPEN_TIMEOUT = 90.0
#: Options of ``websockets``' sync and async ``connect``.
WS_OPTIONS: dict[str, Any] = {"open_timeout": OPEN_TIMEOUT, "max_size": None, "user_agent_header": USER_AGENT}
#: What opening a WebSocket can raise (mapped by :func:`handshake_error`).
WS_OPEN_ERRORS = (InvalidHandshake, InvalidURI, OSError, TimeoutError, asyncio.TimeoutError)


def check_max_buffering(max_buffering: Any) -> None:
    """``None`` (fal's default) or an integer in :data:`MAX_BUFFERING_RANGE`."""
    low, high = MAX_BUFFERING_RANGE
    if max_buffering is None:
        return
    if (
        isinstance(max_buffering, bool)
        or not isinstance(max_buffering, int)
        or not low <= max_buffering <= high
    ):
        raise FalInputError(
            f"max_buffering must be an integer from {low} to {high} (fal's limit), got {max_buffering!r}"
        )


def realtime_url(run_url: str, app: AppId, path: str, token: str, max_buffering: int | None) -> str:
    """``wss://fal.run/owner/app[/sub]/realtime?fal_jwt_token=...`` (``ws://`` for an http run URL).

    The app id and ``path`` are checked path segments, and the URL must end up on the run origin:
    the token (app-scoped, short-lived, but a credential) goes nowhere else.
    """
    parts = urlsplit(run_url)
    scheme = "ws" if parts.scheme == "http" else "wss"
    route = "/".join(p.strip("/") for p in (parts.path, app.full, check_path(path)) if p.strip("/"))
    query: dict[str, str] = {"fal_jwt_token": token}
    if max_buffering is not None:
        check_max_buffering(max_buffering)
        query["max_buffering"] = str(max_buffering)
    url = urlunsplit((scheme, parts.netloc, f"/{route}", urlencode(query), ""))
    if origin_of(url) is None or origin_of(url) != origin_of(run_url):
        raise FalInputError(f"realtime URL for {app.full!r} would leave the run host {run_url!r}")
    return url


@dataclass(frozen=True)
class RealtimeOpening:
    """One opening of a session: a token call, then the WebSocket URL carrying that token.

    Built fresh for every opening, so every (re)connection gets its own token: fal checks the token
    only at the handshake, and one fetched for an earlier opening may have expired since. The hook
    passes the decoded token to :func:`realtime_url`.
    """

    app: AppId
    token_call: Call
    run_url: str
    path: str
    max_buffering: int | None

    @classmethod
    def plan(
        cls, builder: CallBuilder, app_id: str, path: str, max_buffering: int | None, token_expiration: int
    ) -> RealtimeOpening:
        """Validates everything before any network call."""
        app = AppId.parse(app_id)
        run_url = builder.settings.run_url
        realtime_url(run_url, app, path, "check", max_buffering)
        return cls(app, builder.realtime_token(app, token_expiration), run_url, path, max_buffering)


def encode_message(message: Mapping[str, Any], app: AppId) -> bytes:
    check_msgpack(message, app.full)
    try:
        return msgpack.packb(dict(message), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise FalInputError(
            f"Realtime message for {app.full!r} cannot be encoded with msgpack: {err}"
        ) from None


def decode_frame(frame: str | bytes, app: AppId) -> dict[str, Any] | None:
    """A decoded message, or ``None`` for frames to skip."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        try:
            data = msgpack.unpackb(bytes(frame), raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
            raise FalStreamError(
                f"realtime session with {app.full}: undecodable binary frame ({err})"
            ) from None
        return data if isinstance(data, dict) else {"type": "value", "payload": data}
    try:
        payload = json.loads(frame)
    except ValueError:
        return {"type": "text", "payload": frame}
    if not isinstance(payload, dict):
        return {"type": "text", "payload": payload}
    kind = payload.get("type")
    if kind == "x-fal-error":
        raise frame_error(payload, app.full)
    if kind == "x-fal-message":
        return None
    return payload


def frame_error(payload: Mapping[str, Any], app: str) -> FalError:
    """The error an ``x-fal-error`` frame stands for: a refusal no retry fixes, or a session failure.

    ``NOT_FOUND`` (the app has no realtime endpoint) and ``Unauthorized`` (the key may not use the
    app) are permanent; any other code is a :class:`FalRealtimeError` whose ``error`` the caller may
    act on (fal's idle ``TIMEOUT`` asks for a reconnect).
    """
    error = str(payload.get("error") or "UNKNOWN_ERROR")
    reason = str(payload.get("reason") or "")
    because = f": {reason}" if reason else ""
    if error == "NOT_FOUND":
        return FalNotFoundError(
            f"fal app {app} has no realtime endpoint (x-fal-error NOT_FOUND{because})",
            error_type=error,
            detail=dict(payload),
        )
    if error in ("Unauthorized", "UNAUTHORIZED"):
        return FalAuthError(
            f"fal realtime session to {app} was refused (x-fal-error {error}{because}); "
            "check the key and that it may use this app",
            error_type=error,
            detail=dict(payload),
        )
    return FalRealtimeError(
        f"realtime session with {app} failed: {error}{because}", error=error, reason=reason, payload=payload
    )


def handshake_error(exc: BaseException, app: AppId) -> FalError:
    """Map a failed WebSocket opening to the error a caller can act on."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return FalAuthError(
                f"realtime connection to {app.full} refused: HTTP {status}", http_status=status
            )
        if status == 404:
            return FalNotFoundError(
                f"fal app {app.full!r} has no realtime endpoint (HTTP 404 on the WebSocket)",
                http_status=status,
            )
        return FalStreamError(f"realtime connection to {app.full} failed: HTTP {status}", http_status=status)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return FalTimeoutError(f"realtime connection to {app.full} timed out")
    return FalConnectionError(f"realtime connection to {app.full} failed: {type(exc).__name__}: {exc}")


#: The WebSocket close code fal's realtime gateway (and the emulator) uses after a NOT_FOUND frame.
NOT_FOUND_CLOSE = 4404


def closed_error(exc: ConnectionClosed, app: AppId) -> FalError:
    """A closed session: a broken stream to retry, unless the close code says the app has no endpoint.

    The server sends its ``x-fal-error`` frame and closes at once, so a send can meet the close
    before the frame is read; the code then tells the same permanent story as the frame.
    """
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    if code == NOT_FOUND_CLOSE:
        return frame_error({"error": "NOT_FOUND", "reason": reason or f"closed with code {code}"}, app.full)
    return FalStreamError(
        f"realtime session with {app.full} closed (code {code}{', ' + reason if reason else ''})"
    )


class _Session:
    """What the sync and async sessions share: encoding, decoding and error mapping."""

    def __init__(self, app: AppId) -> None:
        self.app = app

    def __repr__(self) -> str:
        return f"{type(self).__name__}(app={self.app.full!r})"

    @contextmanager
    def _io(self, timeout: float | None = None) -> Iterator[None]:
        """Map the socket's failures to the hook's errors around one send or receive."""
        try:
            yield
        except (TimeoutError, asyncio.TimeoutError):
            raise FalTimeoutError(f"no realtime reply from {self.app.full} within {timeout} s") from None
        except ConnectionClosed as exc:
            raise closed_error(exc, self.app) from exc


class RealtimeSession(_Session):
    """A live sync session. ``send`` a mapping, ``recv`` the next decoded reply."""

    def __init__(self, connection: ClientConnection, app: AppId) -> None:
        super().__init__(app)
        self._ws = connection

    def send(self, message: Mapping[str, Any]) -> None:
        data = encode_message(message, self.app)
        with self._io():
            self._ws.send(data)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        while True:
            with self._io(timeout):
                frame = self._ws.recv(timeout=timeout)
            decoded = decode_frame(frame, self.app)
            if decoded is not None:
                return decoded

    def close(self) -> None:
        self._ws.close()


class AsyncRealtimeSession(_Session):
    """Async twin of :class:`RealtimeSession`."""

    def __init__(self, connection: AsyncConnection, app: AppId) -> None:
        super().__init__(app)
        self._ws = connection

    async def send(self, message: Mapping[str, Any]) -> None:
        data = encode_message(message, self.app)
        with self._io():
            await self._ws.send(data)

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        while True:
            with self._io(timeout):
                frame = await asyncio.wait_for(self._ws.recv(), timeout)
            decoded = decode_frame(frame, self.app)
            if decoded is not None:
                return decoded

    async def close(self) -> None:
        await self._ws.close()
