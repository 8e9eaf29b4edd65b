"""A real multi-process deployment for the webhook tests: PostgreSQL, the fal emulator, and Airflow's
api-server (with the fal webhook plugin), scheduler, triggerer and dag-processor, each its own process.

Only the metadata database is shared between Airflow processes, as in production, which is what the
webhook design relies on; SQLite cannot take several writers, so PostgreSQL is started here (as the
``postgres`` OS user when running as root, since ``initdb`` refuses root). The emulator runs as a
separate ``fal-emulator`` process and delivers its signed callbacks to the api-server over HTTP.

:class:`DeploymentCluster` reuses the e2e harness (``AirflowEnv``: home, component processes, logs)
and only swaps the database and adds REST helpers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from fal_provider.emulator.testing import emulator_webhook_extra
from tests.e2e.deployment.balancer import LoadBalancer
from tests.e2e.deployment.hostname import FAKE_HOSTNAME_ENV
from tests.e2e.harness import AirflowCommandError, AirflowEnv, free_port

DEPLOYMENT_DAGS = Path(__file__).resolve().parent / "dags"
PG_BINARIES = ("initdb", "postgres")
FAL_KEY = "e2e-key-id:e2e-key-secret"
T = TypeVar("T")
#: a directory to copy the component logs to when a cluster stops (to debug a failed CI run)
KEEP_LOGS_ENV = "FAL_E2E_LOG_DIR"


class ClusterError(RuntimeError):
    """A process of the cluster failed to start or died; the message carries its log tail."""


def _log_tail(path: Path, tail: int = 4000) -> str:
    return path.read_text(errors="replace")[-tail:] if path.exists() else "(no log)"


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the process group this harness created for ``proc`` (never anything else)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------- PostgreSQL


def _pg_bin_dir() -> Path:
    """Where ``initdb``/``postgres`` live: PATH, Debian's versioned dir, or installed via apt (CI)."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if all((candidate / name).exists() for name in PG_BINARIES):
            return candidate
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, capture_output=True
        )
        return _pg_bin_dir()
    raise ClusterError("PostgreSQL binaries (initdb, postgres) not found and cannot be installed")


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, durability off (tests only)."""

    def __init__(self) -> None:
        # Its own directory under /tmp: the postgres user must traverse it (mkdtemp parents are 0700).
        self.root = Path(tempfile.mkdtemp(prefix="fal-deployment-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.log_path = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)

    def start(self, timeout: float = 60) -> None:
        bin_dir = _pg_bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._cmd(
                str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--no-sync",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self._cmd(
                str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-h", "127.0.0.1", "-k", str(self.data),
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._wait_ready(timeout)

    def create_database(self, name: str, *, template: str | None = None) -> None:
        """A new database, empty or a copy of ``template`` (a migrated one copies in a blink)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or (
            template and not re.fullmatch(r"[a-z0-9_]+", template)
        ):
            raise ValueError(f"not a plain database name: {name!r} / {template!r}")
        conn = self.connect("postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            suffix = f" TEMPLATE {template}" if template else ""
            conn.cursor().execute(f"CREATE DATABASE {name}{suffix}")
        finally:
            conn.close()

    def _wait_ready(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(f"postgres exited {self.proc.returncode}:\n{_log_tail(self.log_path)}")
            try:
                psycopg2.connect(self.dsn("postgres")).close()
                return
            except psycopg2.OperationalError:
                time.sleep(0.3)
        raise ClusterError(f"postgres not ready after {timeout}s:\n{_log_tail(self.log_path)}")

    def dsn(self, database: str = "airflow") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def connect(self, database: str = "airflow") -> Any:
        import psycopg2

        conn = psycopg2.connect(self.dsn(database))
        return conn

    def sqlalchemy_url(self, database: str = "airflow") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGINT)  # "fast" shutdown
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------- emulator


class EmulatorProcess:
    """``fal-emulator`` as its own process, with a signing key file the tests can forge with."""

    def __init__(self, root: Path, *, latency_scale: float = 1.0, concurrency: int = 16) -> None:
        self.root = root
        self.key_file = root / "webhook-signing-key.pem"
        self.log_path = root / "emulator.log"
        self.latency_scale = latency_scale
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).parent / "fal-emulator"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "fal_provider.emulator"]
        command += [
            "--port", "0", "--signing-key-file", str(self.key_file), "--key", FAL_KEY,
            "--latency-scale", str(self.latency_scale), "--concurrency", str(self.concurrency),
            "--webhook-base-delay", "0.5",
        ]  # fmt: skip
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClusterError(f"fal-emulator exited:\n{_log_tail(self.log_path)}")
            match = re.search(r"listening on (http://\S+)", _log_tail(self.log_path))
            if match:
                self.url = match.group(1)
                return
            time.sleep(0.2)
        raise ClusterError(f"fal-emulator did not start:\n{_log_tail(self.log_path)}")

    def _get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=30).raise_for_status().json()

    def stats(self) -> dict[str, Any]:
        return dict(self._get("/_emulator/stats"))

    def request_ids(self) -> list[str]:
        return [item["request_id"] for item in self._get("/_emulator/requests")["requests"]]

    def request_info(self, request_id: str) -> dict[str, Any]:
        return dict(self._get(f"/_emulator/requests/{request_id}"))

    def requests_with_marker(self, marker: str) -> list[dict[str, Any]]:
        """Every request whose arguments carry ``marker`` (the DAGs tag submits with run/task)."""
        infos = [self.request_info(rid) for rid in self.request_ids()]
        return [info for info in infos if (info.get("arguments") or {}).get("marker") == marker]

    def reset(self) -> None:
        """Forget requests and counters, restore startup config and faults (a new test module)."""
        httpx.post(f"{self.url}/_emulator/reset", timeout=30).raise_for_status()

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        httpx.post(f"{self.url}/_emulator/faults", json={"rules": rules}, timeout=30).raise_for_status()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change the running emulator's settings (e.g. ``app_concurrency``); answers the new ones."""
        response = httpx.post(f"{self.url}/_emulator/config", json=changes, timeout=30)
        return dict(response.raise_for_status().json())

    def submit(self, app_id: str, arguments: dict[str, Any]) -> str:
        """Queue a request as a fal client would (outside Airflow); answers its request id."""
        response = httpx.post(
            f"{self.url}/queue/{app_id}",
            json=arguments,
            headers={"authorization": f"Key {FAL_KEY}"},
            timeout=30,
        )
        return str(response.raise_for_status().json()["request_id"])

    def signing_key(self) -> Any:
        from fal_provider.emulator.webhooks import load_or_create_signing_key

        return load_or_create_signing_key(str(self.key_file))

    def connection(self, webhook_base_url: str) -> str:
        extra = {
            "run_url": f"{self.url}/run",
            "rest_url": f"{self.url}/rest",
            "cdn_url": f"{self.url}/cdn",
            "jwks_url": f"{self.url}/rest/.well-known/jwks.json",
            "platform_url": f"{self.url}/platform/v1",  # prices and estimates (cost, budgets)
            "request_page_url": f"{self.url}/_emulator/requests/{{request_id}}/view",
            "webhook_base_url": webhook_base_url,
            "retry_min_wait": 0.2,
            **emulator_webhook_extra(),  # the emulator's user id allow-listed, a channel secret
        }
        return json.dumps(
            {"conn_type": "fal", "host": f"{self.url}/queue", "password": FAL_KEY, "extra": extra}
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


# -------------------------------------------------------------------------------------- Airflow


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


class DeploymentCluster(AirflowEnv):
    """The harness' AIRFLOW_HOME and processes, on PostgreSQL, wired to the emulator for webhooks.

    ``api_servers`` and ``triggerers`` above one give a highly available deployment: the extra
    instances are labelled ``api-server-2``, ``triggerer-2``, ...; the api-servers sit behind a
    :class:`LoadBalancer` that the webhooks, the workers' Execution API and the REST helpers use,
    and each triggerer reports its own hostname (its label) so its Job row can be told apart.
    """

    #: the components of the default (single-instance) deployment
    COMPONENTS = ("api-server", "scheduler", "triggerer", "dag-processor")

    def __init__(
        self,
        pg: PostgresServer,
        emulator: EmulatorProcess,
        *,
        database: str = "airflow",
        api_servers: int = 1,
        triggerers: int = 1,
        dags_folder: Path = DEPLOYMENT_DAGS,
    ):
        super().__init__(dags_folder=dags_folder)
        self.pg = pg
        self.emulator = emulator
        self.database = database
        self._api_token: str | None = None
        self.api_servers = _labels("api-server", api_servers)
        self.triggerers = _labels("triggerer", triggerers)
        self.api_ports = {label: free_port() for label in self.api_servers}
        self.api_ports[self.api_servers[0]] = self.api_port
        self.balancer = LoadBalancer(list(self.api_ports.values())) if api_servers > 1 else None
        self.extra_env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.sqlalchemy_url(database),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": self._async_url(),
                "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__WORKERS": "1",
                # On a loaded CI machine an api-server can take more than the default 5 s to answer;
                # the worker then resends the call, and a resent PATCH .../run fails the task (400).
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                # A triggerer whose Job heartbeat (every 2 s) is older than this is dead: its triggers
                # go to a live one within seconds instead of Airflow's default 30 s.
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "6",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
                "AIRFLOW_CONN_FAL_DEFAULT": emulator.connection(self.api_url),
            }
        )

    def _async_url(self) -> str:
        """Airflow builds an async engine at import; with asyncpg missing it would not start at all.

        The async engine serves only paths these tests do not take (multi-team lookups, the dag-run
        wait endpoint, async state-store calls), so without asyncpg it points at an unused SQLite
        file and every component still shares PostgreSQL through the sync engine.
        """
        import importlib.util

        if importlib.util.find_spec("asyncpg") is not None:
            return self.pg.sqlalchemy_url(self.database).replace("+psycopg2", "+asyncpg")
        return f"sqlite+aiosqlite:///{self.home / 'unused-async.db'}"

    @property
    def api_url(self) -> str:
        """Where clients reach the api-server(s): the load balancer when there are several."""
        return self.balancer.url if self.balancer is not None else self.server_url(self.api_servers[0])

    def server_url(self, label: str) -> str:
        """One api-server directly, bypassing the load balancer."""
        return f"http://127.0.0.1:{self.api_ports[label]}"

    @property
    def components(self) -> tuple[str, ...]:
        return (*self.api_servers, "scheduler", *self.triggerers, "dag-processor")

    # -- lifecycle --------------------------------------------------------------------------------

    def migrate(self) -> None:
        self.run("db", "migrate", timeout=400)

    def start(self, *components: str) -> None:
        """Start components by label (``triggerer``, ``triggerer-2``, ...), each once, in its own group."""
        for label in components:
            if label in self.processes:
                continue
            log = (self.home / f"{label}.log").open("wb")
            self.processes[label] = subprocess.Popen(
                [self.airflow_bin(), _component(label)],
                env={**self.env, **self._instance_env(label)},
                cwd=str(self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _instance_env(self, label: str) -> dict[str, str]:
        """What differs between two instances of one component on this single host."""
        if label in self.api_ports:
            return {"AIRFLOW__API__PORT": str(self.api_ports[label])}
        if label in self.triggerers:
            return {
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.deployment.hostname.component_hostname",
                FAKE_HOSTNAME_ENV: label,
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
        return {}

    def start_all(self) -> None:
        if self.balancer is not None:
            self.balancer.start()
        self.start(*self.components)
        for label in self.api_servers:
            self.wait_healthy(label)

    def wait_healthy(self, label: str, timeout: float = 120) -> None:
        """Wait until one api-server answers its health endpoint (directly, not through the balancer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                url = f"{self.server_url(label)}/api/v2/monitor/health"
                if httpx.get(url, timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AirflowCommandError(f"{label} not healthy{self.component_logs()}")

    def wait_for(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``condition`` until it returns something truthy (and return that), checking every
        component is alive meanwhile; fail with ``what`` and the logs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AirflowCommandError(f"not reached after {timeout}s: {what}{self.component_logs()}")

    def kill(self, name: str) -> None:
        """SIGKILL one component's whole process group (e.g. the triggerer and its supervisor)."""
        proc = self.processes.pop(name)
        _stop_group(proc, signal.SIGKILL, timeout=30)

    def cleanup(self) -> None:
        """Stop everything; with ``FAL_E2E_LOG_DIR`` set, keep every component's log there first."""
        self.stop()
        keep = os.environ.get(KEEP_LOGS_ENV)
        if keep:
            target = Path(keep) / self.database
            target.mkdir(parents=True, exist_ok=True)
            for log in self.home.glob("*.log"):
                shutil.copy2(log, target / log.name)
        super().cleanup()
        if self.balancer is not None:
            self.balancer.stop()

    def component_logs(self, tail: int = 4000) -> str:
        logs = super().component_logs(tail)
        for label, path in (("emulator", self.emulator.log_path), ("postgres", self.pg.log_path)):
            logs += f"\n--- {label} log (tail) ---\n{_log_tail(path, tail)}"
        return logs

    def log_text(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- metadata DB (PostgreSQL instead of the harness' SQLite) ----------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self.pg.connect(self.database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), tuple(params))
                rows = list(cursor.fetchall()) if cursor.description else []
            conn.commit()
            return rows
        finally:
            conn.close()

    def variable_keys(self, prefix: str) -> list[str]:
        return [row[0] for row in self.query("SELECT key FROM variable WHERE key LIKE ?", [prefix + "%"])]

    def try_number(self, dag_id: str, run_id: str, task_id: str) -> int:
        rows = self.query(
            "SELECT try_number FROM task_instance WHERE dag_id=? AND run_id=? AND task_id=? AND map_index=-1",
            [dag_id, run_id, task_id],
        )
        return int(rows[0][0])

    def request_of(self, dag_id: str, run_id: str, task_id: str, timeout: float = 120) -> str:
        """The fal request id a task pushed (XCom ``fal_request``) before it deferred."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.xcoms(dag_id, run_id, key="fal_request").get((task_id, -1))
            if isinstance(value, Mapping) and value.get("request_id"):
                return str(value["request_id"])
            self._check_alive()
            time.sleep(0.5)
        raise AirflowCommandError(f"{task_id} pushed no fal_request XCom{self.component_logs()}")

    # -- REST API (SimpleAuthManager in all-admins mode, with a bearer token) ---------------------

    def _token(self, *, refresh: bool = False) -> str:
        """An admin JWT from ``GET /auth/token``, the all-admins route of SimpleAuthManager.

        Airflow 3.3 lets all-admins requests through without a token (a middleware adds one), but
        3.1 only honours the setting in its login routes and answers 401 to a bare REST call; the
        token route exists on both, so asking it once works for every supported version.
        """
        if refresh or self._api_token is None:
            response = httpx.get(f"{self.api_url}/auth/token", timeout=60)
            if response.status_code not in (200, 201):
                raise AirflowCommandError(f"GET /auth/token: {response.status_code} {response.text}")
            self._api_token = str(response.json()["access_token"])
        return self._api_token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.api_url}{path}"
        headers = {**kwargs.pop("headers", {}), "authorization": f"Bearer {self._token()}"}
        response = httpx.request(method, url, timeout=60, headers=headers, **kwargs)
        if response.status_code == 401:  # expired token (long runs): ask once more
            headers["authorization"] = f"Bearer {self._token(refresh=True)}"
            response = httpx.request(method, url, timeout=60, headers=headers, **kwargs)
        return response

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180) -> None:
        pending = set(dag_ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            self._check_alive()
            pending = {d for d in pending if self.api("GET", f"/api/v2/dags/{d}").status_code != 200}
            if pending:
                time.sleep(1)
        if pending:
            raise AirflowCommandError(f"DAGs never parsed: {sorted(pending)}{self.component_logs()}")

    def trigger_run(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        run_id = f"dep__{dag_id}__{time.time_ns()}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf or {})}
        response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        if response.status_code != 200:
            raise AirflowCommandError(f"trigger {dag_id}: {response.status_code} {response.text}")
        return run_id

    def mark_task(self, dag_id: str, run_id: str, task_id: str, state: str) -> httpx.Response:
        return self.api(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
            json={"new_state": state},
        )


def _labels(component: str, count: int) -> tuple[str, ...]:
    """``triggerer``, ``triggerer-2``, ...: the first keeps the plain name (and log file name)."""
    if count < 1:
        raise ValueError(f"need at least one {component}, got {count}")
    return (component, *(f"{component}-{index}" for index in range(2, count + 1)))


def _component(label: str) -> str:
    """The ``airflow`` sub-command of a label: ``triggerer-2`` -> ``triggerer``."""
    return re.sub(r"-\d+$", "", label)


def make_cluster_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="fal-deployment-"))
