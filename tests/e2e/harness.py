"""A throwaway Airflow installation for end-to-end runs: its own AIRFLOW_HOME and SQLite DB.

It runs ``airflow`` CLI commands (``dags test`` for one-shot runs) and can start the long-running
components (scheduler, triggerer, dag-processor, api-server) as real processes, each logging to its
own file, whose tails are attached to any failure. Used by the e2e tests and
``scripts/run_example.py``; later issues add components through :meth:`AirflowEnv.start`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "dags"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AirflowCommandError(RuntimeError):
    """A CLI command or component failed; the message carries its output and component logs."""


class AirflowEnv:
    """One AIRFLOW_HOME with a SQLite metadata DB and the processes started against it."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        dags_folder: Path = DAGS_FOLDER,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._own_home = home is None
        self.home = Path(home or tempfile.mkdtemp(prefix="fal-e2e-airflow-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder = dags_folder
        self.api_port = free_port()
        self.extra_env = dict(env or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- environment ----------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API_AUTH__JWT_SECRET": "fal-e2e-jwt-secret-not-for-production",
                "AIRFLOW__CORE__FERNET_KEY": "",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            }
        )
        env.update(self.extra_env)
        return env

    def airflow_bin(self) -> str:
        candidate = Path(sys.executable).parent / "airflow"
        return str(candidate) if candidate.exists() else "airflow"

    # -- one-shot commands ----------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Output goes to files, not pipes: a pipe inherited by a short-lived grandchild can keep
        # ``communicate()`` waiting long after the command itself has exited.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            returncode = subprocess.call(
                [self.airflow_bin(), *args],
                env=self.env,
                cwd=str(self.home),
                stdout=out,
                stderr=err,
                timeout=timeout,
            )
            out.seek(0)
            err.seek(0)
            proc = subprocess.CompletedProcess(
                args, returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
            )
        if check and proc.returncode != 0:
            raise AirflowCommandError(
                f"airflow {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
                f"\n--- stderr ---\n{proc.stderr[-6000:]}{self.component_logs()}"
            )
        return proc

    def migrate(self) -> None:
        if not self.db_path.exists():
            self.run("db", "migrate", timeout=300)

    def dags_test(
        self, dag_id: str, conf: Mapping[str, Any] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        args = ["dags", "test", dag_id]
        if conf:
            args += ["--conf", json.dumps(conf)]
        return self.run(*args, timeout=timeout)

    # -- metadata DB ----------------------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path, timeout=30) as db:
            return list(db.execute(sql, tuple(params)).fetchall())

    def latest_run_id(self, dag_id: str) -> str:
        rows = self.query("SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", [dag_id])
        if not rows:
            raise AirflowCommandError(f"No run of {dag_id} in {self.db_path}")
        return str(rows[0][0])

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id=? AND run_id=?", [dag_id, run_id])
        return rows[0][0] if rows else None

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        rows = self.query(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id=? AND run_id=?",
            [dag_id, run_id],
        )
        return {(task_id, map_index): state for task_id, map_index, state in rows}

    def xcoms(self, dag_id: str, run_id: str, key: str = "return_value") -> dict[tuple[str, int], Any]:
        rows = self.query(
            "SELECT task_id, map_index, value FROM xcom WHERE dag_id=? AND run_id=? AND key=?",
            [dag_id, run_id, key],
        )
        return {(task_id, map_index): _decode(value) for task_id, map_index, value in rows}

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        run_id = f"e2e__{dag_id}__{int(time.time() * 1000)}"
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf:
            args += ["--conf", json.dumps(conf)]
        self.run(*args, timeout=120)
        return run_id

    def wait_for_run(
        self, dag_id: str, run_id: str, states: Iterable[str] = ("success", "failed"), timeout: float = 240
    ) -> str:
        wanted = set(states)
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.run_state(dag_id, run_id)
            if state in wanted:
                return str(state)
            time.sleep(1)
        raise AirflowCommandError(
            f"{dag_id}/{run_id} still {state!r} after {timeout}s; tasks: "
            f"{self.task_states(dag_id, run_id)}{self.component_logs()}"
        )

    def wait_for_task_state(
        self, dag_id: str, run_id: str, task_id: str, state: str, timeout: float = 180, map_index: int = -1
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.task_states(dag_id, run_id).get((task_id, map_index)) == state:
                return
            time.sleep(0.5)
        raise AirflowCommandError(
            f"{task_id} never reached {state!r}: {self.task_states(dag_id, run_id)}{self.component_logs()}"
        )

    # -- long-running components ----------------------------------------------------------------

    def start(self, *components: str) -> None:
        """Start ``scheduler``, ``triggerer``, ``dag-processor``, ``api-server`` (each once)."""
        for name in components:
            if name in self.processes:
                continue
            log = (self.home / f"{name}.log").open("wb")
            self.processes[name] = subprocess.Popen(
                [self.airflow_bin(), name],
                env=self.env,
                cwd=str(self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if "api-server" in components:
            self._wait_for_port(self.api_port, timeout=120)

    def executor_released(self, dag_id: str, run_id: str, task_id: str, states: Iterable[str]) -> bool:
        """Whether the scheduler has processed its executor's report that the process of
        ``task_id``'s current try exited while the task was in one of ``states``.

        A task that parks (deferred, awaiting input) keeps its key and try number, so if it is
        resumed before the scheduler has seen the parking process exit, that stale "finished"
        report can land on the resumed try and fail it (Airflow's state-mismatch check). Anything
        that resumes a task from outside, as a test answering a review does, waits for this first.
        """
        path = self.home / "scheduler.log"
        if not path.exists():
            return False
        tries = self.query(
            "SELECT try_number FROM task_instance WHERE dag_id=? AND run_id=? AND task_id=? AND map_index=-1",
            [dag_id, run_id, task_id],
        )
        if not tries:
            return False
        prefix = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id}, "
        this_try = f" try_number={tries[0][0]},"
        wanted = tuple(f" state={state}," for state in states)
        return any(
            prefix in line and this_try in line and any(state in line for state in wanted)
            for line in path.read_text(errors="replace").splitlines()
        )

    def _wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.5)
        raise AirflowCommandError(f"Nothing listens on port {port} after {timeout}s{self.component_logs()}")

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise AirflowCommandError(
                    f"airflow {name} exited with {proc.returncode}{self.component_logs()}"
                )

    def component_logs(self, tail: int = 4000) -> str:
        """The tails of the component logs and of every task try's log, for a failure message."""
        parts = []
        for name in self.processes:
            path = self.home / f"{name}.log"
            if path.exists():
                parts.append(f"\n--- {name} log (tail) ---\n{path.read_text(errors='replace')[-tail:]}")
        for path in sorted(self.home.glob("logs/dag_id=*/run_id=*/task_id=*/attempt=*.log")):
            parts.append(
                f"\n--- {path.relative_to(self.home)} (tail) ---\n{path.read_text(errors='replace')[-tail:]}"
            )
        return "".join(parts)

    def stop(self) -> None:
        """Stop the processes this harness started (their own process groups only)."""
        for proc in self.processes.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.processes.clear()

    def cleanup(self) -> None:
        self.stop()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> AirflowEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _decode(value: Any) -> Any:
    """XCom values are stored as JSON (text or bytes) in Airflow 3."""
    if isinstance(value, bytes | bytearray):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
