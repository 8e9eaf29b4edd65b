"""A loopback TCP load balancer in front of several api-servers, as a real deployment has one.

Everything that reaches the api-servers over the network in production goes through it: fal's
webhook deliveries (the connection's ``webhook_base_url``), the workers' Execution API calls and the
tests' REST calls. Each new client connection goes to the next backend in turn; a backend that
refuses the connection (it was killed) is skipped, so after one api-server dies every new
connection lands on a survivor, and the connections that were open to the dead one are closed, as
a load balancer's health checks and connection resets would do. The counters say where
connections went, which is the evidence that a delivery reached the survivor.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Sequence

from tests.e2e.harness import free_port

CONNECT_TIMEOUT = 5.0
CHUNK = 64 * 1024


class LoadBalancer:
    """Round-robin with fail-over over ``backends`` (ports on 127.0.0.1), run on its own event loop."""

    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self.port = free_port()
        #: connections forwarded per backend port, and connection attempts a backend refused
        self.forwarded: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self._next = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> tuple[dict[int, int], dict[int, int]]:
        """A snapshot of (forwarded, refused) per backend port, safe to read from the test thread."""
        with self._lock:
            return dict(self.forwarded), dict(self.refused)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="deployment-load-balancer", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._startup_error is not None:
            raise RuntimeError(f"load balancer did not start: {self._startup_error!r}")
        if self._server is None:
            raise RuntimeError("load balancer did not start within 30 s")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port)
            )
        except OSError as exc:  # the free port was taken meanwhile
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    # -- forwarding -------------------------------------------------------------------------------

    def _order(self) -> list[int]:
        """Backends to try for one connection: the next one in turn first, then the others."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.backends)
        return self.backends[start:] + self.backends[:start]

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # asyncio keeps only weak references to tasks: hold this connection's until it is done.
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for port in self._order():
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError):
                with self._lock:
                    self.refused[port] += 1
                continue
            with self._lock:
                self.forwarded[port] += 1
            break
        if upstream is None:  # every backend is down: the client sees a closed connection
            client_writer.close()
            return
        server_reader, server_writer = upstream
        # The connection lives as long as the backend side does: when the backend closes or dies,
        # the client's connection is closed too (and a client that half-closes still gets its answer).
        to_server = asyncio.create_task(_pipe(client_reader, server_writer))
        try:
            await _pipe(server_reader, client_writer)
        finally:
            to_server.cancel()
            for writer in (client_writer, server_writer):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF or a reset, then close the other side's write half."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
