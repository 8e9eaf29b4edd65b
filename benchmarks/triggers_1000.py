"""1,000 requests waiting in one process, the way one triggerer holds them.

    python benchmarks/triggers_1000.py [--requests 1000] [--duration 5] [--modes poll stream]

For each wait mode: ``--requests`` requests are submitted to a ``fal-emulator`` subprocess (its CPU
is not counted here) on ``emulator/echo``, each finishing ``--duration`` seconds (plus a small
spread) after it starts; then as many ``FalRequestTrigger`` coroutines run on one event loop until
all have fired. Printed: CPU seconds and peak RSS of this process, fal HTTP calls per request
(emulator ``/_emulator/stats``), and completion-detection latency (the emulator marks the request
COMPLETED -> the trigger yields its event), p50/p99.

A measurement, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "bench-key-id:bench-key-secret"


def start_emulator(workdir: Path, concurrency: int) -> tuple[subprocess.Popen[bytes], str]:
    log_path = workdir / "emulator.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fal_provider.emulator", "--port", "0", "--key", KEY,
         "--concurrency", str(concurrency), "--ping-interval", "15"],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", log_path.read_text())
        if match:
            return proc, match.group(1)
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"fal-emulator did not start: {log_path.read_text()[-2000:]}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fal_calls(stats: dict[str, Any]) -> int:
    return int(stats["status_calls"]["total"] + stats["status_stream_calls"] + stats["result_calls"])


async def run_mode(mode: str, base: str, n: int, duration: float) -> dict[str, Any]:
    import httpx

    from fal_provider.hooks.fal import FalHook
    from fal_provider.triggers.fal import FalRequestTrigger

    hook = FalHook()
    refs = await asyncio.gather(
        *(hook.asubmit("emulator/echo", {"duration_s": duration + (i % 50) * 0.02, "i": i}) for i in range(n))
    )
    fired: dict[str, float] = {}

    async def wait(ref: Any) -> None:
        trigger = FalRequestTrigger(
            request=ref.to_xcom(), wait_mode=mode, poll_interval=1.0, max_poll_interval=30
        )
        async for event in trigger.run():
            assert event.payload["status"] == "success", event.payload
            fired[ref.request_id] = time.time()

    async with httpx.AsyncClient(base_url=base, timeout=60) as admin:
        before = (await admin.get("/_emulator/stats")).json()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        await asyncio.gather(*(wait(ref) for ref in refs))
        wall = time.monotonic() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        after = (await admin.get("/_emulator/stats")).json()
        latencies = []
        for ref in refs:
            info = (await admin.get(f"/_emulator/requests/{ref.request_id}")).json()
            latencies.append(fired[ref.request_id] - float(info["timings"]["completed_at"]))
    return {
        "mode": mode,
        "requests": n,
        "wall_s": round(wall, 2),
        "cpu_s": round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 2),
        "peak_rss_mib": round(cpu1.ru_maxrss / 1024, 1),
        "http_calls_per_request": round((fal_calls(after) - fal_calls(before)) / n, 2),
        "latency_p50_s": round(pct(latencies, 0.50), 3),
        "latency_p99_s": round(pct(latencies, 0.99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each request runs")
    parser.add_argument("--modes", nargs="+", default=["poll", "stream"], choices=["poll", "stream"])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fal-bench-triggers-"))
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    proc, base = start_emulator(workdir, concurrency=args.requests + 10)
    try:
        extra = {"run_url": f"{base}/run", "rest_url": f"{base}/rest", "cdn_url": f"{base}/cdn"}
        os.environ["AIRFLOW_CONN_FAL_DEFAULT"] = json.dumps(
            {"conn_type": "fal", "host": f"{base}/queue", "password": KEY, "extra": extra}
        )
        results = []
        for mode in args.modes:
            result = asyncio.run(run_mode(mode, base, args.requests, args.duration))
            results.append(result)
            print(json.dumps(result), flush=True)
        print(
            "\n| mode | requests | wall s | CPU s | peak RSS MiB | HTTP calls/request | latency p50 s | p99 s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['mode']} | {r['requests']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mib']} | "
                f"{r['http_calls_per_request']} | {r['latency_p50_s']} | {r['latency_p99_s']} |"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
