"""Serving an emulator app with uvicorn, in the foreground (CLI) or a background thread (tests)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

from fal_provider.emulator.app import EmulatorApp


class _QuietDisconnects(logging.Filter):
    """Hide tracebacks of connections the emulator drops on purpose (fault injection)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "emulated dropped connection" not in text and "returned without" not in text


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving so ``--port 0`` knows its port.

    ``proto`` must be IPPROTO_TCP: asyncio only disables Nagle (TCP_NODELAY) on accepted sockets whose
    proto says TCP, and with Nagle on every response body waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app: EmulatorApp, log_level: str = "warning") -> Any:
    import uvicorn

    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDisconnects) for f in error_log.filters):
        error_log.addFilter(_QuietDisconnects())
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        ws_ping_interval=None,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """uvicorn in a daemon thread with its own event loop."""

    def __init__(self, app: EmulatorApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = make_server(app)
        self.thread = threading.Thread(target=self._run, name=f"fal-emulator-{self.port}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        loop.close()

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fal emulator failed to start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
