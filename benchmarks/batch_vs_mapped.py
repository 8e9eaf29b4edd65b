"""One FalBatchOperator vs mapped FalInferenceOperator tasks, against one emulator.

    PYTHONPATH=. python -u benchmarks/batch_vs_mapped.py [--items 1000] [--big 10000] [--window 32]

1. ``--items`` instant inputs (``emulator/echo``) under a real scheduler (LocalExecutor,
   PostgreSQL, the deployment harness of ``tests/e2e/deployment``): one DAG with one
   ``FalBatchOperator`` task, then one DAG mapping ``FalInferenceOperator`` over the same inputs.
   Wall time is trigger -> run ``success``; CPU is every Airflow process this script started
   (scheduler and its LocalExecutor workers and task processes, api-server, dag-processor), read
   as the CPU of reaped children once the components are stopped; HTTP calls per item from the
   emulator's counters.
2. ``--big`` inputs through one batch task in a plain Python process (no scheduler), and ``--items``
   the same way for comparison: wall time, peak RSS of that process, HTTP calls per item.
3. ``--slow N`` (off by default): N inputs that each run ``--duration`` seconds on fal, through one
   batch task waiting on its worker and one with ``deferrable=True`` (a triggerer runs for both):
   wall time, Airflow CPU, HTTP calls per item, the number of resumes and what each one cost.

A measurement, not a test: figures depend on the machine (print ``os.getloadavg()`` with them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DAGS = textwrap.dedent(
    """
    import os
    from airflow.sdk import DAG
    from fal_provider.operators.batch import FalBatchOperator
    from fal_provider.operators.fal import FalInferenceOperator

    N = int(os.environ["BENCH_ITEMS"])
    INPUTS = [{"n": n} for n in range(N)]

    with DAG("bench_batch", schedule=None, catchup=False):
        FalBatchOperator(
            task_id="batch", app_id="emulator/echo", inputs=INPUTS,
            output_path="file://" + os.environ["BENCH_OUTPUT"], max_in_flight=int(os.environ["BENCH_WINDOW"]),
        )

    SLOW = [{"n": n, "duration_s": float(os.environ["BENCH_DURATION"])} for n in range(int(os.environ["BENCH_SLOW"]))]
    for dag_id, deferrable in (("bench_slow_worker", False), ("bench_slow_deferred", True)):
        with DAG(dag_id, schedule=None, catchup=False):
            FalBatchOperator(
                task_id="batch", app_id="emulator/echo", inputs=SLOW, deferrable=deferrable,
                output_path="file://" + os.environ["BENCH_OUTPUT"] + "/" + dag_id,
                max_in_flight=int(os.environ["BENCH_WINDOW"]), poll_interval=1, max_poll_interval=5,
            )

    with DAG("bench_mapped", schedule=None, catchup=False, max_active_tasks=64):
        FalInferenceOperator.partial(
            task_id="infer", app_id="emulator/echo", deferrable=False, poll_interval=0.2
        ).expand(arguments=INPUTS)
    """
)

ENGINE = textwrap.dedent(
    """
    import json, os, resource, sys, time
    from types import SimpleNamespace
    from fal_provider.operators.batch import FalBatchOperator

    n, window, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    op = FalBatchOperator(
        task_id="batch", app_id="emulator/echo", inputs=[{"n": i} for i in range(n)],
        output_path="file://" + out, max_in_flight=window, wait_mode=mode, progress_interval=3600,
    )
    ti = SimpleNamespace(task_id="batch", try_number=1, map_index=-1)
    started = time.monotonic()
    manifest = op.execute({"ti": ti, "run_id": f"bench_{n}_{mode}"})
    print(json.dumps({
        "wall_s": time.monotonic() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "counts": manifest["counts"],
    }))
    """
)


def calls(stats: dict[str, Any]) -> int:
    return int(
        stats["submits_total"]
        + stats["status_calls"]["total"]
        + stats["status_stream_calls"]
        + stats["result_calls"]
        + stats["cancels"]
    )


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def task_span(cluster: Any, dag_id: str, run_id: str) -> float:
    """First task start to last task end (the tasks' own time, without the trigger and run
    bookkeeping the wall time also holds)."""
    rows = cluster.query(
        "SELECT min(start_date), max(end_date) FROM task_instance WHERE dag_id=? AND run_id=?",
        [dag_id, run_id],
    )
    first, last = rows[0]
    return (last - first).total_seconds() if first and last else 0.0


def batch_elapsed(output: Path) -> float | None:
    """The batch operator's own execute time (``this_try.elapsed_s`` of its manifest)."""
    for manifest in output.glob("*/batch/manifest.json"):
        return float(json.loads(manifest.read_text())["this_try"]["elapsed_s"])
    return None


def resumes(cluster: Any, dag_id: str) -> int:
    """How often a deferrable batch resumed (its task log says so once per resume)."""
    logs = cluster.home.glob(f"logs/dag_id={dag_id}/**/*.log")
    return sum(path.read_text(errors="replace").count("fal batch: resumed") for path in logs)


def scheduler_phase(
    items: int, window: int, dag_ids: tuple[str, ...], slow: int = 0, duration: float = 0.0
) -> dict[str, dict[str, Any]]:
    from tests.e2e.deployment.cluster import DeploymentCluster, EmulatorProcess, PostgresServer

    root = Path(tempfile.mkdtemp(prefix="fal-bench-"))
    dags = root / "dags"
    dags.mkdir()
    (dags / "bench_dags.py").write_text(DAGS)
    pg = PostgresServer()
    emulator = EmulatorProcess(root / "emulator", latency_scale=0.0, concurrency=64)
    results: dict[str, dict[str, Any]] = {}
    pg.start()
    emulator.start()
    try:
        pg.create_database("airflow")
        env = {
            "BENCH_ITEMS": str(items),
            "BENCH_OUTPUT": str(root / "out"),
            "BENCH_WINDOW": str(window),
            "BENCH_SLOW": str(slow),
            "BENCH_DURATION": str(duration),
        }
        os.environ.update(env)
        for position, dag_id in enumerate(dag_ids):
            emulator.reset()
            cluster = DeploymentCluster(pg, emulator, database="airflow", dags_folder=dags)
            cluster.extra_env.update(env)
            try:
                if position == 0:
                    cluster.migrate()
                cpu_before = children_cpu()
                triggerer = ("triggerer",) if dag_id.startswith("bench_slow") else ()
                cluster.start("api-server", "scheduler", "dag-processor", *triggerer)
                cluster.wait_healthy("api-server")
                cluster.wait_for_dags([dag_id], timeout=300)
                started = time.monotonic()
                run_id = cluster.trigger_run(dag_id)
                state = cluster.wait_for_run(dag_id, run_id, timeout=3600)
                wall = time.monotonic() - started
                stats = emulator.stats()
                span = task_span(cluster, dag_id, run_id)
                resumed = resumes(cluster, dag_id)
            finally:
                cluster.stop()
            results[dag_id] = {
                "state": state,
                "wall_s": round(wall, 1),
                "task_span_s": round(span, 1),
                "airflow_cpu_s": round(children_cpu() - cpu_before, 1),
                "http_calls_per_item": round(
                    calls(stats) / (slow if dag_id.startswith("bench_slow") else items), 2
                ),
                "submits": stats["submits_total"],
                "resumes": resumed,
            }
            if dag_id == "bench_batch":
                results[dag_id]["execute_s"] = batch_elapsed(root / "out")
            print(f"{dag_id}: {json.dumps(results[dag_id])} (load {os.getloadavg()})", flush=True)
            cluster.cleanup()
    finally:
        emulator.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def engine_phase(n: int, window: int, mode: str) -> dict[str, Any]:
    from fal_provider.emulator.testing import run_emulator

    with run_emulator(latency_scale=0, concurrency=64) as emu, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "AIRFLOW_CONN_FAL_DEFAULT": emu.connection_json(), "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-c", ENGINE, str(n), str(window), mode, out],
            env=env, capture_output=True, text=True, check=True, timeout=3600,
        )  # fmt: skip
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        stats = emu.stats()
    figures["http_calls_per_item"] = round(calls(stats) / n, 2)
    figures["submits"] = stats["submits_total"]
    figures["wall_s"] = round(figures["wall_s"], 1)
    figures["peak_rss_mb"] = round(figures["peak_rss_mb"], 1)
    return figures


def slow_phase(n: int, duration: float, window: int) -> None:
    dag_ids = ("bench_slow_worker", "bench_slow_deferred")
    figures = scheduler_phase(0, window, dag_ids, slow=n, duration=duration)
    worker, deferred = (figures[dag_id] for dag_id in dag_ids)
    print(f"\n{n} inputs of {duration:g} s each, window {window} (LocalExecutor, PostgreSQL, a triggerer):")
    print(f"{'':24}{'on the worker':>22}{'deferrable=True':>22}")
    for key in ("state", "wall_s", "airflow_cpu_s", "http_calls_per_item", "submits", "resumes"):
        print(f"{key:24}{worker.get(key, '-')!s:>22}{deferred.get(key, '-')!s:>22}")
    if deferred["resumes"]:
        extra_wall = (deferred["wall_s"] - worker["wall_s"]) / deferred["resumes"]
        extra_cpu = (deferred["airflow_cpu_s"] - worker["airflow_cpu_s"]) / deferred["resumes"]
        print(
            f"each resume: {extra_wall:+.2f} s wall, {extra_cpu:+.2f} s Airflow CPU (vs waiting on the worker)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--skip-scheduler", action="store_true")
    parser.add_argument("--skip-mapped", action="store_true", help="scheduler phase: the batch DAG only")
    parser.add_argument("--skip-engine", action="store_true", help="no plain-process phase")
    parser.add_argument("--slow", type=int, default=0, help="inputs of the worker vs deferrable phase")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each --slow input runs")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    if not args.skip_scheduler:
        dag_ids = ("bench_batch",) if args.skip_mapped else ("bench_batch", "bench_mapped")
        sched = scheduler_phase(args.items, args.window, dag_ids)
        batch = sched["bench_batch"]
        mapped = sched.get("bench_mapped", {})
        print(f"\n{args.items} instant inputs under a real scheduler (LocalExecutor, PostgreSQL):")
        print(f"{'':24}{'1 FalBatchOperator':>22}{'mapped FalInference':>22}")
        for key in (
            "state",
            "wall_s",
            "task_span_s",
            "execute_s",
            "airflow_cpu_s",
            "http_calls_per_item",
            "submits",
        ):
            print(f"{key:24}{batch.get(key, '-')!s:>22}{mapped.get(key, '-')!s:>22}")
        if batch["wall_s"] and mapped:
            print(f"speed-up per item: {mapped['wall_s'] / batch['wall_s']:.1f}x wall, "
                  f"{mapped['airflow_cpu_s'] / max(batch['airflow_cpu_s'], 0.1):.1f}x CPU")  # fmt: skip
    if args.slow:
        slow_phase(args.slow, args.duration, args.window)
    if args.skip_engine:
        return
    print("\nOne batch task in a plain process (no scheduler):")
    for n, mode in ((args.items, "stream"), (args.big, "stream"), (args.big, "poll")):
        figures = engine_phase(n, args.window, mode)
        print(f"  {n:>6} inputs, wait_mode={mode:6}: {json.dumps(figures)}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
