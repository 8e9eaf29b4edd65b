"""Client CPU per status GET: the async hook, plain httpx, and raw HTTP/1.1 (h11) on the same loop.

    python benchmarks/status_call_cpu.py [--calls 4000] [--concurrency 64 1000] [--profile out.prof]

A ``fal-emulator`` subprocess holds a few long-running requests; each client then makes ``--calls``
status GETs of them with ``--concurrency`` in flight, on one event loop, and this process's CPU
(user + system; the emulator's is another process's) is divided by the calls. Three clients:

* ``hook``: ``FalHook.aget_status`` — what a trigger pays per poll (headers, key check, retries,
  transport, JSON and model parsing);
* ``httpx``: a plain ``httpx.AsyncClient().get`` + ``.json()``;
* ``raw h11``: one asyncio stream per in-flight slot, requests written and answers parsed with
  ``h11`` (the HTTP/1.1 state machine httpx itself uses), JSON-decoded: the floor of the wire work.

``--profile`` writes a cProfile of the hook's run. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench


async def measure(
    emulator: _bench.Emulator, calls: int, concurrency: int, profile: str | None
) -> dict[str, float]:
    import httpx

    from fal_provider.hooks.fal import FalHook

    hook = FalHook()
    refs = await asyncio.gather(
        *(hook.asubmit("emulator/echo", {"duration_s": 600, "i": i}) for i in range(8))
    )
    await hook.aget_status(refs[0])  # warm: settings, shared client, imports
    result: dict[str, float] = {}

    async def via_hook(i: int) -> None:
        await hook.aget_status(refs[i % len(refs)])

    await _bench.drive(via_hook, min(calls, 500), concurrency)
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    result["hook"] = await _bench.drive(via_hook, calls, concurrency) / calls
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)

    auth = {"Authorization": f"Key {_bench.KEY}", "Accept": "application/json"}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), timeout=60) as client:

        async def via_httpx(i: int) -> None:
            (await client.get(refs[i % len(refs)].status_url, params={"logs": "0"}, headers=auth)).json()

        await _bench.drive(via_httpx, min(calls, 500), concurrency)
        result["httpx"] = await _bench.drive(via_httpx, calls, concurrency) / calls

    parts = urlsplit(emulator.base)
    conns = [_bench.RawH11(parts.hostname or "127.0.0.1", parts.port or 80) for _ in range(concurrency)]
    free: asyncio.Queue[_bench.RawH11] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    targets = [urlsplit(ref.status_url).path + "?logs=0" for ref in refs]
    raw_headers = list(auth.items())

    async def via_h11(i: int) -> None:
        conn = await free.get()
        try:
            await conn.get_json(targets[i % len(targets)], raw_headers)
        finally:
            free.put_nowait(conn)

    await _bench.drive(via_h11, min(calls, 500), concurrency)
    result["raw_h11"] = await _bench.drive(via_h11, calls, concurrency) / calls
    for conn in conns:
        await conn.close()
    await hook.aclose_shared_client()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--profile", default=None, help="write a cProfile of the hook's calls here")
    parser.add_argument(
        "--uvloop", action="store_true", help="run on uvloop (the triggerer does not by default)"
    )
    args = parser.parse_args()
    with _bench.emulator_process(concurrency=64) as emulator:
        _bench.airflow_env(emulator)
        _bench.quiet_logs()
        print(f"status GETs against {emulator.base}; {_bench.load()}")
        print("| in flight | hook ms/call | plain httpx ms/call | raw h11 ms/call | hook / raw |")
        print("|---|---|---|---|---|")
        for concurrency in args.concurrency:
            runner = asyncio.run
            if args.uvloop:
                import uvloop

                runner = uvloop.run
            profile = f"{args.profile}.{concurrency}" if args.profile else None
            r = runner(measure(emulator, args.calls, concurrency, profile))
            print(
                f"| {concurrency} | {r['hook'] * 1000:.3f} | {r['httpx'] * 1000:.3f} | {r['raw_h11'] * 1000:.3f} "
                f"| {r['hook'] / r['raw_h11']:.1f}x |",
                flush=True,
            )
        print(f"{_bench.load()}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
