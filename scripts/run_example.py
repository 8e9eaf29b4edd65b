"""The main job: run an example DAG end to end against the embedded fal emulator.

    python scripts/run_example.py [--dag-id fal_pipeline] [--output-dir output/]

It starts the emulator in this process, makes a throwaway AIRFLOW_HOME (SQLite, ``airflow db
migrate``), points ``fal_default`` at the emulator through ``AIRFLOW_CONN_FAL_DEFAULT``, runs the DAG
with ``airflow dags test`` and prints the XCom values and where the outputs are. To run the same
DAG on fal.ai, set a real ``fal_default`` connection (or ``FAL_KEY``) instead; nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.harness import AirflowCommandError, AirflowEnv  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dag-id", default="fal_pipeline", help="example DAG to run (default fal_pipeline)")
    parser.add_argument(
        "--output-dir", default=str(REPO_ROOT / "output"), help="where the DAG writes reports and images"
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary AIRFLOW_HOME")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fal_provider.emulator.testing import run_emulator

    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with run_emulator() as emulator:
        env = AirflowEnv(
            env={
                "AIRFLOW_CONN_FAL_DEFAULT": emulator.connection_json(),
                "FAL_EXAMPLE_OUTPUT_DIR": str(output_dir),
            }
        )
        print(f"fal emulator: {emulator.base_url}\nAIRFLOW_HOME: {env.home}", flush=True)
        try:
            print("Migrating the metadata database ...", flush=True)
            env.migrate()
            print(f"Running `airflow dags test {args.dag_id}` ...", flush=True)
            env.dags_test(args.dag_id, conf={"output_dir": str(output_dir)}, timeout=600)
            status = report(env, args.dag_id, output_dir)
            print(f"The emulator billed {emulator.billed_total():.6f} USD")
            return status
        except AirflowCommandError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        finally:
            if args.keep_home:
                env.stop()
            else:
                env.cleanup()


def report(env: AirflowEnv, dag_id: str, output_dir: Path) -> int:
    run_id = env.latest_run_id(dag_id)
    state = env.run_state(dag_id, run_id)
    print(f"\nRun {run_id}: {state}")
    for (task_id, map_index), task_state in sorted(env.task_states(dag_id, run_id).items()):
        print(f"  {task_id}{'' if map_index < 0 else f'[{map_index}]'}: {task_state}")
    print("\nXCom return values:")
    for (task_id, map_index), value in sorted(env.xcoms(dag_id, run_id).items()):
        label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        print(f"  {label}: {json.dumps(value)[:400]}")
    cost = env.xcoms(dag_id, run_id).get(("cost", -1))
    if isinstance(cost, dict):
        unknown = f", {cost['unknown']} of unknown cost" if cost.get("unknown") else ""
        print(
            f"\nThis run cost {cost['total']:.6f} {cost['currency']} ({cost['requests']} fal requests{unknown})"
        )
    produced = sorted(p for p in output_dir.rglob("*") if p.is_file() and _run_dir_name(run_id) in str(p))
    print(f"\nOutputs under {output_dir}:")
    for path in produced:
        print(f"  {path} ({path.stat().st_size} bytes)")
    return 0 if state == "success" else 1


def _run_dir_name(run_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


if __name__ == "__main__":
    sys.exit(main())
