"""FalHook vs fal's own client: N submit -> wait -> result round trips against one local emulator.

    python benchmarks/hook_vs_fal_client.py [--requests 200] [--interval 0.1] [--duration 0]

Both clients do the same thing per request, one request after the other, against the same
in-process emulator (``emulator/echo``):

* fal_client: ``fal_client.subscribe(app, args)`` (pointed at the emulator by the emulator's
  ``patch_fal_client()`` helper). It submits, then ``handle.get()`` polls ``/status`` every
  ``interval`` seconds (fal_client's default 0.1 s) until COMPLETED, then GETs the result.
* FalHook: ``submit()``, then ``get_status()`` every ``interval`` seconds (the same fixed interval,
  first poll immediately, like fal_client) until COMPLETED, then ``get_result()``.

It prints the wall time of each side, their ratio, and HTTP calls per request counted by the
emulator (``/_emulator/stats``). This is a measurement, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

APP = "emulator/echo"


def _calls_per_request(stats: dict[str, Any], n: int) -> dict[str, float]:
    return {
        "submit": stats["submits_total"] / n,
        "status": stats["status_calls"]["total"] / n,
        "result": stats["result_calls"] / n,
    }


def _timed(label: str, n: int, one: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        result = one(i)
        if result.get("i") != i:
            raise SystemExit(f"{label}: wrong result for request {i}: {result!r}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="round trips per client (default 200)")
    parser.add_argument("--interval", type=float, default=0.1, help="status poll interval, s (default 0.1)")
    parser.add_argument("--duration", type=float, default=0.0, help="echo duration_s per request (default 0)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of N requests per client, alternating which goes first; medians reported (default 5)",
    )
    args = parser.parse_args(argv)

    import fal_client
    import structlog

    from fal_provider.emulator.testing import run_emulator
    from fal_provider.hooks.fal import FalHook
    from fal_provider.models import CompletedStatus

    # One info line per submit would drown the figures (Airflow logs through structlog).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n, interval = args.requests, args.interval
    arguments = {"duration_s": args.duration} if args.duration else {}

    with run_emulator() as emulator:
        os.environ["AIRFLOW_CONN_FAL_DEFAULT"] = emulator.connection_json()
        hook = FalHook()

        def via_hook(i: int) -> Any:
            ref = hook.submit(APP, {"i": i, **arguments})
            while not isinstance(hook.get_status(ref), CompletedStatus):
                time.sleep(interval)
            return hook.get_result(ref)

        def via_fal_client(i: int) -> Any:
            return fal_client.subscribe(APP, {"i": i, **arguments}, interval=interval)

        # Warm both (imports, connection pools) so neither pays one-off costs in the timing.
        with emulator.patch_fal_client():
            via_fal_client(-1)
            via_hook(-1)

            def measure(label: str, one: Callable[[int], Any]) -> tuple[float, dict[str, float]]:
                emulator.reset()
                seconds = _timed(label, n, one)
                return seconds, _calls_per_request(emulator.stats(), n)

            # Rounds alternate which client goes first, so a burst of load from elsewhere on the
            # machine does not land on one side only; the medians are compared.
            client_runs: list[float] = []
            hook_runs: list[float] = []
            for r in range(args.rounds):
                order = (("fal_client", via_fal_client), ("FalHook", via_hook))
                for label, one in order if r % 2 == 0 else reversed(order):
                    seconds, calls = measure(label, one)
                    if label == "FalHook":
                        hook_runs.append(seconds)
                        hook_calls = calls
                    else:
                        client_runs.append(seconds)
                        client_calls = calls
        client_s, hook_s = statistics.median(client_runs), statistics.median(hook_runs)
        hook.close()

    print(
        f"{n} submit -> wait -> result round trips of {APP} (poll interval {interval} s), sequential; "
        f"median of {args.rounds} rounds"
    )
    print(
        f"{'client':<12}{'total s':>10}{'ms/request':>12}{'submit':>9}{'status':>9}{'result':>9}  (calls/request)"
    )
    for label, seconds, calls in (("fal_client", client_s, client_calls), ("FalHook", hook_s, hook_calls)):
        print(
            f"{label:<12}{seconds:>10.2f}{1000 * seconds / n:>12.1f}"
            f"{calls['submit']:>9.2f}{calls['status']:>9.2f}{calls['result']:>9.2f}"
        )
    print(f"ratio FalHook / fal_client (medians): {hook_s / client_s:.2f}")
    print(
        "per-round totals, s: fal_client "
        + " ".join(f"{x:.2f}" for x in client_runs)
        + " | FalHook "
        + " ".join(f"{x:.2f}" for x in hook_runs)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
