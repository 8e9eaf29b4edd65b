"""1,000 small inputs: one realtime session vs 1,000 queue requests, against the same emulator.

The realtime side runs ``FalRealtimeOperator.execute`` (token, one WebSocket, msgpack frames,
ordered collection), once per ``--window`` value of ``max_in_flight``. The queue side does what a
queue client must do per input (submit, poll status until COMPLETED, fetch the result) through
``FalHook``'s async methods with ``--queue-concurrency`` requests in flight; the emulator gets as
many runner slots, so the queue is never the bottleneck and the figure is pure per-request cost.

The emulator runs as a separate process (``python -m fal_provider.emulator``) so it does not share
this process's interpreter lock with the client being measured. Both sides check that every
input came back, in order. Usage::

    python benchmarks/realtime_vs_queue.py [--n 1000] [--window 1 --window 16] [--queue-concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

APP = "emulator/realtime"
KEY = "bench-key-id:bench-key-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def emulator(concurrency: int) -> Iterator[str]:
    """Start the emulator CLI on a free port; yield its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "fal_provider.emulator", "--port", str(port), "--key", KEY]
    cmd += ["--concurrency", str(concurrency), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/_emulator/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"emulator did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def connection_json(base: str) -> str:
    extra = {"run_url": f"{base}/run", "rest_url": f"{base}/rest", "cdn_url": f"{base}/cdn"}
    return json.dumps({"conn_type": "fal", "host": f"{base}/queue", "password": KEY, "extra": extra})


def make_inputs(n: int) -> list[dict[str, Any]]:
    return [{"i": i, "prompt": f"frame {i}"} for i in range(n)]


def bench_realtime(inputs: list[dict[str, Any]], window: int) -> float:
    from fal_provider.operators.realtime import FalRealtimeOperator

    op = FalRealtimeOperator(
        task_id=f"bench_rt_{window}",
        app_id=APP,
        inputs=inputs,
        max_in_flight=window,
        max_xcom_bytes=None,
        log_interval=3600,
    )
    started = time.perf_counter()
    outputs = op.execute({})
    elapsed = time.perf_counter() - started
    if outputs != inputs:
        raise AssertionError("realtime outputs do not match the inputs in order")
    return elapsed


async def _queue_all(inputs: list[dict[str, Any]], concurrency: int, poll: float) -> list[Any]:
    from fal_provider.hooks.fal import FalHook

    hook = FalHook()
    gate = asyncio.Semaphore(concurrency)

    async def one(item: dict[str, Any]) -> Any:
        async with gate:
            ref = await hook.asubmit(APP, item)
            while (await hook.aget_status(ref)).status != "COMPLETED":
                await asyncio.sleep(poll)
            return await hook.aget_result(ref)

    try:
        return list(await asyncio.gather(*(one(item) for item in inputs)))
    finally:
        await hook.aclose_shared_client()


def bench_queue(inputs: list[dict[str, Any]], concurrency: int, poll: float) -> float:
    started = time.perf_counter()
    results = asyncio.run(_queue_all(inputs, concurrency, poll))
    elapsed = time.perf_counter() - started
    if results != inputs:
        raise AssertionError("queue results do not match the inputs in order")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of inputs (default 1000)")
    parser.add_argument("--window", type=int, action="append", help="max_in_flight values (default 1 and 16)")
    parser.add_argument(
        "--queue-concurrency", type=int, default=32, help="queue requests in flight (default 32)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.05, help="status poll interval, s (default 0.05)"
    )
    args = parser.parse_args(argv)
    windows = args.window or [1, 16]
    inputs = make_inputs(args.n)

    # Per-request INFO lines ("Submitted fal request ...") would be measured too; keep warnings.
    # Airflow reads this when it is first imported, which happens below.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    with emulator(args.queue_concurrency) as base:
        os.environ["AIRFLOW_CONN_FAL_DEFAULT"] = connection_json(base)
        bench_realtime(make_inputs(5), 1)  # warm-up: imports, first token, first connection
        realtime = {window: bench_realtime(inputs, window) for window in windows}
        rt_stats = httpx.get(f"{base}/_emulator/stats").json()
        queue = bench_queue(inputs, args.queue_concurrency, args.poll_interval)
        stats = httpx.get(f"{base}/_emulator/stats").json()
    calls = stats["submits_total"] + stats["status_calls"]["total"] + stats["result_calls"]

    print(f"{args.n} small inputs against the fal emulator ({APP}); {os.cpu_count()} CPU(s)")
    for window, seconds in realtime.items():
        print(
            f"  realtime, one session, max_in_flight={window:<3}: {seconds:7.2f} s "
            f"({args.n / seconds:7.0f} inputs/s)"
        )
    print(
        f"  queue, submit+poll+result, {args.queue_concurrency} in flight, poll {args.poll_interval:g} s: "
        f"{queue:7.2f} s ({args.n / queue:7.0f} inputs/s)"
    )
    print(
        f"  wire work: realtime {rt_stats['realtime_sessions']} session(s), {rt_stats['tokens']} token call(s), "
        f"{rt_stats['realtime_messages']} message(s); queue {calls} HTTP calls "
        f"({stats['submits_total']} submits, {stats['status_calls']['total']} status polls, "
        f"{stats['result_calls']} results)"
    )
    for window, seconds in realtime.items():
        print(f"  ratio queue / realtime (max_in_flight={window}): {queue / seconds:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
