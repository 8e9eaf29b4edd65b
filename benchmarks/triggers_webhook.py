"""1,000 requests waiting in ``wait_mode="webhook"``: what it costs fal, the triggerer and the API server.

    python benchmarks/triggers_webhook.py [--requests 1000] [--window 30] [--skip-poll] [--skip-callbacks]

Two measurements, both against a ``fal-emulator`` subprocess (so its CPU is not counted here):

A. **Waiting** (the triggerer's side). ``--requests`` requests are submitted with a duration longer
   than the window; then as many ``FalRequestTrigger(wait_mode="webhook", backstop_interval=300)``
   coroutines run on one event loop, the way one triggerer holds them, for ``--window`` seconds.
   Counted: fal HTTP calls during the window (emulator ``/_emulator/stats``), callback-record reads
   (each is one Execution API round trip in a real triggerer; here the reader is counted in memory),
   process CPU seconds and share of a core, the emulator's share apart, RSS growth and peak,
   failures (a waiter that ends in the window), event-loop lag p99/max from a 50 ms heartbeat.
   Submission (in batches of 500) ends before the window opens and is timed apart. The same is measured for ``wait_mode="poll"`` (operator
   defaults: 1 s floor, 30 s ceiling) for comparison, unless ``--skip-poll``.

B. **Callback to resume** (the API server's side). A real Airflow metadata DB (SQLite, migrated into
   a temporary AIRFLOW_HOME) holds ``--requests`` task instances DEFERRED on fal triggers; the real
   receiver app runs under uvicorn on 127.0.0.1; each request is submitted to the emulator with the
   ``fal_webhook`` URL naming its task. The emulator signs and POSTs the callbacks; the receiver
   verifies (emulator JWKS), records the Variable and calls ``Trigger.submit_event``. Reported:
   receiver handling time per callback (POST in -> task SCHEDULED, committed) and end-to-end
   latency (the emulator marks the request COMPLETED -> receiver committed), p50/p99. The scheduler
   ``--spread`` staggers completions (default one every 20 ms, 50/s); ``--spread 0`` is one burst.
   The scheduler then queues the task on its next loop (``scheduler_idle_sleep_time``, default 1 s), not measured.

A measurement, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key:bench-secret"


def start_emulator(workdir: Path, concurrency: int) -> tuple[subprocess.Popen[bytes], str]:
    exe = Path(sys.executable).parent / "fal-emulator"
    log = (workdir / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "--port", "0", "--key", KEY, "--concurrency", str(concurrency),
         "--signing-key-file", str(workdir / "key.pem")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+)", (workdir / "emulator.log").read_text())
        if match:
            return proc, match.group(1)
        time.sleep(0.1)
    raise RuntimeError("fal-emulator did not start")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def emulator_calls(stats: dict[str, Any]) -> int:
    return int(stats["status_calls"]["total"] + stats["status_stream_calls"] + stats["result_calls"])


# ------------------------------------------------------------------------------------ A. waiting


async def measure_waiting(base: str, n: int, window: float, mode: str, emulator_pid: int) -> dict[str, float]:
    import httpx
    import psutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bench

    from fal_provider.hooks.fal import FalHook
    from fal_provider.triggers.fal import FalRequestTrigger
    from fal_provider.webhooks import waiting

    hook = FalHook("fal_bench")
    submit0 = time.monotonic()
    refs = []
    for start in range(0, n, 500):  # submission is not measured; it ends before the window opens
        refs += await asyncio.gather(
            *(
                hook.asubmit("emulator/echo", {"duration_s": window + 60 + n / 250, "i": i})
                for i in range(start, min(n, start + 500))
            )
        )
    submit_s = time.monotonic() - submit0
    emulator = psutil.Process(emulator_pid)
    reads = 0

    async def counting_reader(key: str) -> str | None:
        nonlocal reads
        reads += 1
        return None  # no callback arrives during the window

    waiting._read_variable = counting_reader  # type: ignore[assignment]
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{base}/_emulator/stats")).json()
        cpu0, rss0 = time.process_time(), rss_mib()
        emu0 = sum(emulator.cpu_times()[:2])
        heartbeat = _bench.Heartbeat()
        heartbeat.start()
        triggers = [
            FalRequestTrigger(
                request=ref.to_xcom(), fal_conn_id="fal_bench", wait_mode=mode, backstop_interval=300
            )
            for ref in refs
        ]
        tasks = [asyncio.create_task(t.run().__anext__()) for t in triggers]
        await asyncio.sleep(window)
        cpu, rss = time.process_time() - cpu0, rss_mib() - rss0
        emu_cpu = sum(emulator.cpu_times()[:2]) - emu0
        await heartbeat.stop()
        after = (await http.get(f"{base}/_emulator/stats")).json()
        # No request completes and no callback arrives in the window: a waiter that ended is a failure.
        failures = sum(1 for task in tasks if task.done())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(hook.acancel(ref) for ref in refs))
    return {
        "submit_s_not_measured": submit_s,
        "client_pct_of_a_core": 100 * cpu / window,
        "emulator_pct_of_a_core": 100 * emu_cpu / window,
        "peak_rss_mib": _bench.peak_rss_mib(),
        "failures": failures,
        **heartbeat.summary(),
        "fal_calls_per_request": (emulator_calls(after) - emulator_calls(before)) / n,
        "record_reads_per_request": reads / n,
        "cpu_seconds": cpu,
        "cpu_ms_per_request_per_minute": cpu / n / window * 60 * 1000,
        "rss_growth_mib": rss,
        "rss_kib_per_request": rss * 1024 / n,
    }


# ------------------------------------------------------------------------- B. callback to resume


def prepare_airflow_db(home: Path) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.db import initdb

    from tests.integration.webhooks.webhook_db_helpers import DAG_SOURCE

    folder = home / "dags"
    folder.mkdir()
    (folder / "bench_dags.py").write_text(DAG_SOURCE)
    initdb()
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(DagBag(dag_folder=str(folder)), bundle_name="dags-folder", bundle_version=None)


def measure_callbacks(base: str, n: int, spread: float) -> dict[str, float]:
    import httpx

    from fal_provider.webhooks.settings import ReceiverSettings
    from fal_provider.webhooks.urls import TaskIdentity, build_webhook_url
    from tests.integration.webhooks.webhook_db_helpers import (
        WAIT_DAG_ID,
        make_run,
        serve_receiver,
        task_state,
    )

    placeholder = [make_run({"wait": f"pending-{i}"})["wait"] for i in range(n)]
    settings = ReceiverSettings(jwks_url=f"{base}/rest/.well-known/jwks.json")
    handled: dict[str, float] = {}
    durations: list[float] = []
    with serve_receiver(settings) as served, httpx.Client(timeout=60) as http:
        receiver = served.receiver
        original = receiver.handle

        async def timed(request: Any) -> Any:
            start = time.perf_counter()
            response = await original(request)
            durations.append(time.perf_counter() - start)
            handled[request.headers.get("x-fal-webhook-request-id", "")] = time.time()
            return response

        receiver.handle = timed
        base_url = served.url.rsplit("/fal/webhook", 1)[0]
        headers = {"Authorization": f"Key {KEY}"}
        submitted: list[tuple[str, Any]] = []
        for index, deferred in enumerate(placeholder):
            assert deferred is not None
            url = build_webhook_url(base_url, TaskIdentity(WAIT_DAG_ID, deferred.run_id, "wait"))
            answer = http.post(
                f"{base}/queue/emulator/echo",
                params={"fal_webhook": url},
                json={"duration_s": 2 + index * spread},
                headers=headers,
            ).raise_for_status()
            submitted.append((answer.json()["request_id"], deferred))
        # Point each trigger at its real request id (the kwargs the receiver checks).
        from airflow.models.trigger import Trigger
        from airflow.utils.session import create_session

        with create_session() as session:
            for request_id, deferred in submitted:
                trigger = session.get(Trigger, deferred.trigger_id)
                trigger.kwargs = {
                    "request": {"request_id": request_id, "app_id": "emulator/echo"},
                    "wait_mode": "webhook",
                }
        deadline = time.monotonic() + 120 + n * 0.1
        while len(handled) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        latencies = []
        resumed = 0
        for request_id, deferred in submitted:
            info = http.get(f"{base}/_emulator/requests/{request_id}").json()
            if request_id in handled and info["timings"]["completed_at"]:
                latencies.append(handled[request_id] - info["timings"]["completed_at"])
            if task_state(deferred.run_id, "wait")[0] == "scheduled":
                resumed += 1
    return {
        "callbacks": len(durations),
        "resumed": resumed,
        "handle_p50_ms": pct(durations, 0.5) * 1000,
        "handle_p99_ms": pct(durations, 0.99) * 1000,
        "end_to_end_p50_ms": pct(latencies, 0.5) * 1000,
        "end_to_end_p99_ms": pct(latencies, 0.99) * 1000,
        "end_to_end_mean_ms": statistics.fmean(latencies) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--skip-poll", action="store_true")
    parser.add_argument("--skip-callbacks", action="store_true", help="run A only")
    parser.add_argument(
        "--spread", type=float, default=0.02, help="B: seconds between completions (0: one burst)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fal-bench-webhook-"))
    os.environ["AIRFLOW_HOME"] = str(workdir)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{workdir / 'airflow.db'}"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    sys.path.insert(0, str(REPO))
    logging.getLogger("fal_provider.webhooks.receiver").setLevel(logging.WARNING)
    emulator, base = start_emulator(workdir, concurrency=min(args.requests + 10, 10000))
    os.environ["AIRFLOW_CONN_FAL_BENCH"] = (
        f'{{"conn_type": "fal", "host": "{base}/queue", "password": "{KEY}", '
        f'"extra": {{"rest_url": "{base}/rest", "run_url": "{base}/run"}}}}'
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        modes = ["webhook"] if args.skip_poll else ["webhook", "poll"]
        for mode in modes:
            result = asyncio.run(measure_waiting(base, args.requests, args.window, mode, emulator.pid))
            print(f"A. {args.requests} waiting requests, wait_mode={mode}, {args.window:.0f} s window:")
            for name, value in result.items():
                print(f"   {name:32s} {value:10.3f}")
        if args.skip_callbacks:
            return 0
        prepare_airflow_db(workdir)
        result_b = measure_callbacks(base, args.requests, args.spread)
        print(
            f"B. {args.requests} callbacks, one every {args.spread} s, -> receiver (real SQLite metadata DB, uvicorn on 127.0.0.1):"
        )
        for name, value in result_b.items():
            print(f"   {name:32s} {value:10.3f}")
    finally:
        emulator.terminate()
        emulator.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
