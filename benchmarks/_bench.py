"""Shared plumbing of the waiting benchmarks: an emulator in its own process, CPU and loop-lag probes.

Not a public module and not a test helper: the scripts next to it import it by path.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KEY = "bench-key-id:bench-key-secret"


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    base: str

    def cpu_seconds(self) -> float:
        """The emulator process's CPU so far (user + system), read from /proc."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def rss_mib(self) -> float:
        import psutil

        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20

    def connection(self) -> str:
        extra = {
            "run_url": f"{self.base}/run",
            "rest_url": f"{self.base}/rest",
            "cdn_url": f"{self.base}/cdn",
        }
        return json.dumps({"conn_type": "fal", "host": f"{self.base}/queue", "password": KEY, "extra": extra})


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the emulator gets SIGKILL when this process dies, even by SIGKILL (no finally runs then)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the emulator's whole process group (its own session): TERM, then KILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _exit_on_sigterm() -> None:
    """``timeout`` and CI send SIGTERM: turn it into SystemExit so the ``finally`` below still runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)


@contextmanager
def emulator_process(concurrency: int, *extra: str) -> Iterator[Emulator]:
    """``fal-emulator`` in a subprocess, so its CPU is not this process's (and is reported apart).

    It never outlives the benchmark: stopped in ``finally`` (SIGTERM is made an exit so that runs),
    at interpreter exit, and, on Linux, by the kernel when this process dies any other way.
    """
    _exit_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="fal-bench-"))
    log_path = workdir / "emulator.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fal_provider.emulator", "--port", "0", "--key", KEY,
         "--concurrency", str(concurrency), "--ping-interval", "15", *extra],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    atexit.register(_stop_group, proc)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on (http://\S+)", log_path.read_text())
            if match:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            match = None
        if match is None:
            raise RuntimeError(f"fal-emulator did not start: {log_path.read_text()[-2000:]}")
        yield Emulator(proc, match.group(1))
    finally:
        _stop_group(proc)
        atexit.unregister(_stop_group)


def airflow_env(emulator: Emulator) -> None:
    """A throwaway AIRFLOW_HOME and the fal connection pointing at the emulator."""
    home = tempfile.mkdtemp(prefix="fal-bench-airflow-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ["AIRFLOW_CONN_FAL_DEFAULT"] = emulator.connection()


def quiet_logs() -> None:
    """Airflow logs through structlog; an info line per request would be what gets measured.

    Airflow configures logging when it is first imported, so import it (and the provider) first and
    filter afterwards; filtering before the import is undone by it.
    """
    import logging

    import airflow.sdk  # noqa: F401  (configures logging)
    import structlog

    import fal_provider.triggers.fal  # noqa: F401

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("airflow", "fal_provider"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


@dataclass
class Heartbeat:
    """A task that wakes every ``period`` s and records how late it woke: the loop's lag."""

    period: float = 0.05
    lags: list[float] = field(default_factory=list)
    #: When each lag was measured, seconds since :meth:`start` (where in the run the worst one was).
    at: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lags.append(max(0.0, loop.time() - due))
            self.at.append(loop.time() - started)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def summary(self) -> dict[str, float]:
        worst = max(range(len(self.lags)), key=self.lags.__getitem__, default=None)
        return {
            "lag_p99_s": round(pct(self.lags, 0.99), 3),
            "lag_max_s": round(self.lags[worst], 3) if worst is not None else 0.0,
            "lag_max_at_s": round(self.at[worst], 1) if worst is not None else 0.0,
        }


class GcTimer:
    """CPU time spent in the cyclic collector, via ``gc.callbacks`` (settings are not touched)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.by_generation = [0.0, 0.0, 0.0]
        self.passes = [0, 0, 0]
        self.longest = 0.0  # the longest single pass, CPU s: the loop stands still that long
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            spent = time.process_time() - self._start
            self.seconds += spent
            self.by_generation[info["generation"]] += spent
            self.passes[info["generation"]] += 1
            self.longest = max(self.longest, spent)

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def start_like_triggerer(waiters: list[Coroutine[Any, Any, None]]) -> list[asyncio.Task[None]]:
    """One task per waiter, created the way Airflow's triggerer creates trigger tasks: one at a time,
    yielding to the loop twice between two (``TriggerRunner.create_triggers``), so 10,000 new
    triggers never take their first step in one loop iteration."""
    tasks = []
    for waiter in waiters:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        tasks.append(asyncio.get_running_loop().create_task(waiter))
    return tasks


async def drive(one: Callable[[int], Awaitable[None]], calls: int, concurrency: int) -> float:
    """CPU seconds for ``calls`` calls of ``one`` with ``concurrency`` workers."""
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            await one(i)

    start = cpu_now()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return cpu_now() - start


class RawH11:
    """A minimal keep-alive HTTP/1.1 GET over one asyncio stream, parsed by h11."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get_json(self, target: str, headers: list[tuple[str, str]]) -> Any:
        import h11

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(h11.Request(method="GET", target=target, headers=[("Host", self.host), *headers]))
        data += conn.send(h11.EndOfMessage())
        self.writer.write(data)
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return json.loads(body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


#: The raw status GET's CPU on the machine the issue's figures were taken on (0.15-0.19 ms).
REFERENCE_RAW_MS = 0.17


async def raw_status_ms(base: str, status_url: str, calls: int = 3000, concurrency: int = 64) -> float:
    """CPU ms of one raw HTTP/1.1 status GET (h11, kept-alive) on this machine now: how fast the
    machine is, printed beside figures that depend on it."""
    parts = urlsplit(base)
    conns = [RawH11(parts.hostname or "127.0.0.1", parts.port or 80) for _ in range(concurrency)]
    free: asyncio.Queue[RawH11] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    target = urlsplit(status_url).path + "?logs=0"
    headers = [("Authorization", f"Key {KEY}"), ("Accept", "application/json")]

    async def one(_: int) -> None:
        conn = await free.get()
        try:
            await conn.get_json(target, headers)
        finally:
            free.put_nowait(conn)

    await drive(one, min(calls, 500), concurrency)
    seconds = await drive(one, calls, concurrency)
    for conn in conns:
        await conn.close()
    return 1000 * seconds / calls
