"""Shared plumbing of the waiting benchmarks: an emulator in its own process, CPU and loop-lag probes.

Not a public module and not a test helper: the scripts next to it import it by path.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@contextmanager
def emulator_process(concurrency: int, *extra: str) -> Iterator[Emulator]:
    """``fal-emulator`` in a subprocess, so its CPU is not this process's (and is reported apart)."""
    workdir = Path(tempfile.mkdtemp(prefix="fal-bench-"))
    log_path = workdir / "emulator.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fal_provider.emulator", "--port", "0", "--key", KEY,
         "--concurrency", str(concurrency), "--ping-interval", "15", *extra],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on (http://\S+)", log_path.read_text())
            if match:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"fal-emulator did not start: {log_path.read_text()[-2000:]}")
        yield Emulator(proc, match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def airflow_env(emulator: Emulator) -> None:
    """A throwaway AIRFLOW_HOME and the fal connection pointing at the emulator."""
    home = tempfile.mkdtemp(prefix="fal-bench-airflow-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ["AIRFLOW_CONN_FAL_DEFAULT"] = emulator.connection()


def quiet_logs() -> None:
    """Airflow logs through structlog; an info line per request would be what gets measured."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


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
    _task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lags.append(max(0.0, loop.time() - due))

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
        return {"lag_p99_s": round(pct(self.lags, 0.99), 3), "lag_max_s": round(max(self.lags, default=0), 3)}


class GcTimer:
    """CPU time spent in the cyclic collector, via ``gc.callbacks`` (settings are not touched)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.by_generation = [0.0, 0.0, 0.0]
        self.passes = [0, 0, 0]
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            spent = time.process_time() - self._start
            self.seconds += spent
            self.by_generation[info["generation"]] += spent
            self.passes[info["generation"]] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)
