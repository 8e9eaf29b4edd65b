"""Many requests waiting in one event loop, the way one triggerer holds them, and fal-client beside it.

    python benchmarks/triggers_1000.py [--requests 1000] [--duration 30] [--modes poll stream fal_client]

For each mode: ``--requests`` requests are submitted to a ``fal-emulator`` subprocess on
``emulator/echo``, each running ``--duration`` s (plus up to 1 s of spread); then one waiter per
request runs on one event loop until all have finished:

* ``poll`` / ``stream``: ``FalRequestTrigger(wait_mode=...)`` (poll_interval 1 s, the default
  ceiling), exactly what a triggerer runs;
* ``fal_client``: fal-client's own async waiting loop on the same work
  (``AsyncRequestHandle.iter_events()`` at its default interval until ``Completed``).

Waiters start one per loop iteration or two, the way Airflow's triggerer creates trigger tasks.

Printed first: the client CPU of one status GET through the hook and raw HTTP/1.1 (h11) side
by side on one loop, 64 in flight; the raw one is also the machine's speed (this VM's has varied
twofold between sessions), and per mode the client CPU scaled to the machine issue 10 was
measured on ("at reference speed"). Printed per mode: this process's CPU as a share of one core
over the wait, the emulator's share and RSS (another process; columns of their own so they are
never mistaken for the client's), peak RSS, failures,
fal HTTP calls per request, detection latency (fal marks the request COMPLETED -> the waiter has
its event) p50/p99, event-loop lag p99/max from a 50 ms heartbeat task (and when in the run the
worst lag was), the share of this process's CPU spent in the garbage collector and its longest
single pass (``gc.callbacks``; GC settings are not changed).

A measurement, not a test: figures depend on the machine (its load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench


def fal_calls(stats: dict[str, Any]) -> int:
    return int(stats["status_calls"]["total"] + stats["status_stream_calls"] + stats["result_calls"])


async def _trigger_waiter(mode: str, ref: Any, fired: dict[str, float], failures: list[str]) -> None:
    from fal_provider.triggers.fal import FalRequestTrigger

    trigger = FalRequestTrigger(request=ref.to_xcom(), wait_mode=mode, poll_interval=1.0)
    async for event in trigger.run():
        if event.payload["status"] != "success":
            failures.append(str(event.payload)[:200])
        fired[ref.request_id] = time.time()


async def _fal_client_waiter(client: Any, ref: Any, fired: dict[str, float], failures: list[str]) -> None:
    import fal_client

    handle = await client.get_handle(ref.app_id, ref.request_id)
    try:
        async for status in handle.iter_events():
            if isinstance(status, fal_client.Completed):
                break
    except Exception as err:  # a benchmark counts failures, it does not stop on them
        failures.append(f"{type(err).__name__}: {err}"[:200])
    fired[ref.request_id] = time.time()


async def run_mode(
    mode: str, emulator: _bench.Emulator, n: int, duration: float, submit_budget: float | None = None
) -> dict[str, Any]:
    import httpx

    from fal_provider.hooks.fal import FalHook

    hook = FalHook()
    refs = []
    # Every request must still be running when the measured window opens, and end ``duration`` s
    # (plus spread) after it: each request's duration is counted from the *window's* start, which is
    # ``budget`` s after submission starts, so slow submission does not eat into the wait.
    budget = submit_budget if submit_budget is not None else max(5.0, n / 250)
    t0 = time.time()
    for start in range(0, n, 500):  # submits are not what is measured; keep their burst modest
        left = t0 + budget - time.time()
        refs += await asyncio.gather(
            *(
                hook.asubmit(
                    "emulator/echo", {"duration_s": max(0.0, left) + duration + (i % 50) * 0.02, "i": i}
                )
                for i in range(start, min(n, start + 500))
            )
        )
    submit_s = time.time() - t0
    if submit_s > budget:
        print(f"warning: submitting took {submit_s:.1f} s > budget {budget:.1f} s; raise --submit-budget")
    await asyncio.sleep(max(0.0, t0 + budget - time.time()))
    fired: dict[str, float] = {}
    failures: list[str] = []
    client = None
    if mode == "fal_client":
        import fal_client

        client = fal_client.AsyncClient(key=_bench.KEY)
        waiters = [_fal_client_waiter(client, ref, fired, failures) for ref in refs]
    else:
        waiters = [_trigger_waiter(mode, ref, fired, failures) for ref in refs]

    heartbeat = _bench.Heartbeat()
    async with httpx.AsyncClient(base_url=emulator.base, timeout=120) as admin:
        before = (await admin.get("/_emulator/stats")).json()
        emu_cpu0 = emulator.cpu_seconds()
        heartbeat.start()
        with _bench.GcTimer() as gc_timer:
            cpu0, started = _bench.cpu_now(), time.monotonic()
            tasks = await _bench.start_like_triggerer(waiters)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            cpu1, wall = _bench.cpu_now(), time.monotonic() - started
        await heartbeat.stop()
        emu_cpu = emulator.cpu_seconds() - emu_cpu0
        emu_rss = emulator.rss_mib()
        failures += [f"{type(r).__name__}: {r}"[:200] for r in results if isinstance(r, BaseException)]
        after = (await admin.get("/_emulator/stats")).json()
        latencies = []
        for ref in refs:
            info = (await admin.get(f"/_emulator/requests/{ref.request_id}")).json()
            completed_at = info["timings"].get("completed_at")
            if ref.request_id in fired and completed_at:
                latencies.append(fired[ref.request_id] - float(completed_at))
    await hook.aclose_shared_client()
    cpu = cpu1 - cpu0
    return {
        "mode": mode,
        "requests": n,
        "submit_s": round(submit_s, 1),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 2),
        "core_pct": round(100 * cpu / wall, 1),
        "emulator_core_pct": round(100 * emu_cpu / wall, 1),
        "peak_rss_mib": round(_bench.peak_rss_mib(), 0),
        "emulator_rss_mib": round(emu_rss, 0),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "calls_per_request": round((fal_calls(after) - fal_calls(before)) / n, 1),
        "detect_p50_s": round(_bench.pct(latencies, 0.50), 2),
        "detect_p99_s": round(_bench.pct(latencies, 0.99), 2),
        **heartbeat.summary(),
        "gc_pct_of_cpu": round(100 * gc_timer.seconds / cpu, 1) if cpu else 0.0,
        "gc_gen2_passes": gc_timer.passes[2],
        "gc_longest_pass_s": round(gc_timer.longest, 3),
    }


COLUMNS = (
    ("mode", "mode"),
    ("requests", "waiters"),
    ("submit_s", "submit s (not measured)"),
    ("wall_s", "wall s"),
    ("core_pct", "client % of a core"),
    ("core_pct_at_reference", "client % at reference speed"),
    ("emulator_core_pct", "emulator % of a core"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("emulator_rss_mib", "emulator RSS MiB"),
    ("failures", "failures"),
    ("calls_per_request", "HTTP calls/request"),
    ("detect_p50_s", "detect p50 s"),
    ("detect_p99_s", "detect p99 s"),
    ("lag_p99_s", "loop lag p99 s"),
    ("lag_max_s", "lag max s"),
    ("lag_max_at_s", "lag max at s"),
    ("gc_pct_of_cpu", "GC % of CPU"),
    ("gc_longest_pass_s", "longest GC pass s"),
)


async def machine_reference(
    emulator: _bench.Emulator, calls: int = 3000, concurrency: int = 64
) -> tuple[float, float]:
    """CPU ms of one status GET right now, raw HTTP/1.1 and through the hook, side by side on
    this loop (this VM's speed has varied twofold between sessions, so the raw one is the yardstick)."""
    from fal_provider.hooks.fal import FalHook

    hook = FalHook()
    ref = await hook.asubmit("emulator/echo", {"duration_s": 60})

    async def via_hook(_: int) -> None:
        await hook.aget_status(ref)

    try:
        raw_ms = await _bench.raw_status_ms(emulator.base, str(ref.status_url), calls, concurrency)
        await _bench.drive(via_hook, min(calls, 500), concurrency)  # warm: settings, lane, imports
        return raw_ms, 1000 * await _bench.drive(via_hook, calls, concurrency) / calls
    finally:
        await hook.acancel(ref)
        await hook.aclose_shared_client()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each request runs")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["poll", "stream", "fal_client"],
        choices=["poll", "stream", "fal_client"],
    )
    parser.add_argument(
        "--submit-budget",
        type=float,
        default=None,
        help="seconds allowed for submitting (default max(5, requests/250)); the window opens after it",
    )
    args = parser.parse_args()
    with _bench.emulator_process(concurrency=min(args.requests + 10, 10000)) as emulator:
        _bench.airflow_env(emulator)
        _bench.quiet_logs()
        os.environ["FAL_KEY"] = _bench.KEY
        import fal_client.client as fal_module

        fal_module.QUEUE_URL_FORMAT = f"{emulator.base}/queue/"
        print(f"{args.requests} waiters, requests of {args.duration} s; {_bench.load()}", flush=True)
        raw_ms, hook_ms = asyncio.run(machine_reference(emulator))
        print(
            f"client CPU per status GET, 64 in flight: hook {hook_ms:.3f} ms, raw HTTP/1.1 {raw_ms:.3f} ms "
            f"(hook / raw {hook_ms / raw_ms:.1f}x)",
            flush=True,
        )
        print(
            f"machine now: raw GET {raw_ms:.3f} ms (issue 10's machine: ~{_bench.REFERENCE_RAW_MS} ms); "
            f"'at reference speed' scales client CPU by {_bench.REFERENCE_RAW_MS / raw_ms:.2f}",
            flush=True,
        )
        results = []
        for mode in args.modes:
            result = asyncio.run(run_mode(mode, emulator, args.requests, args.duration, args.submit_budget))
            result["core_pct_at_reference"] = round(result["core_pct"] * _bench.REFERENCE_RAW_MS / raw_ms, 1)
            results.append(result)
            print(result, flush=True)
        print("\n| " + " | ".join(title for _, title in COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for r in results:
            print("| " + " | ".join(str(r[key]) for key, _ in COLUMNS) + " |")
        by_mode = {r["mode"]: r for r in results}
        for mode in ("poll", "stream"):
            if mode in by_mode and "fal_client" in by_mode and by_mode[mode]["cpu_s"]:
                ratio = by_mode["fal_client"]["cpu_s"] / by_mode[mode]["cpu_s"]
                print(f"fal_client CPU / {mode} CPU: {ratio:.1f}x")
        print(_bench.load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
