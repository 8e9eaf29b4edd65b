"""Print how fast the emulator turns around queue requests and sync runs (figures, not a test).

python benchmarks/emulator_throughput.py [N]
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from fal_provider.emulator.testing import run_emulator


async def _queue_round_trips(base: str, key: str, count: int) -> float:
    headers = {"Authorization": f"Key {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        # Bounded: httpx's pool slows down sharply with hundreds of waiters, which is not the emulator.
        gate = asyncio.Semaphore(50)

        async def one() -> None:
            async with gate:
                await round_trip()

        async def round_trip() -> None:
            sub = (await client.post("/queue/emulator/echo", json={"i": 1})).json()
            while (await client.get(sub["status_url"])).json()["status"] != "COMPLETED":
                await asyncio.sleep(0.1)  # fal_client's default poll interval
            (await client.get(sub["response_url"])).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - started


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with run_emulator(concurrency=64) as emu:
        assert emu.key is not None
        elapsed = asyncio.run(_queue_round_trips(emu.base_url, emu.key, count))
        print(f"queue: {count} submit+poll+result round trips in {elapsed:.2f} s ({count / elapsed:.0f}/s)")
        with httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Key {emu.key}"}) as client:
            started = time.perf_counter()
            for _ in range(count):
                client.post("/run/emulator/echo", json={"i": 1}).raise_for_status()
            elapsed = time.perf_counter() - started
        print(f"run: {count} sequential sync runs in {elapsed:.2f} s ({elapsed / count * 1000:.1f} ms each)")


if __name__ == "__main__":
    main()
