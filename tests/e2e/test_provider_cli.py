"""The provider as Airflow's own commands see it: discovered, its connection type usable, its plugin loaded.

Each step is a real ``airflow`` command in a fresh AIRFLOW_HOME, the way a user installs and
configures the provider, ending with a hook built from the stored connection talking to the emulator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import AirflowEnv

pytestmark = pytest.mark.e2e

KEY = "cli-key-id:cli-key-secret"


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator(key=KEY) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow() -> Iterator[AirflowEnv]:
    env = AirflowEnv()
    try:
        env.migrate()
        yield env
    finally:
        env.cleanup()


def test_providers_list_shows_the_provider(airflow: AirflowEnv) -> None:
    out = airflow.run("providers", "list", "-o", "json").stdout
    packages = {p["package_name"]: p for p in json.loads(out[out.index("[") :])}
    assert "airflow-provider-fal" in packages


def test_plugin_is_loaded(airflow: AirflowEnv) -> None:
    out = airflow.run("plugins", "-o", "json").stdout
    names = {p["name"] for p in json.loads(out[out.index("[") :])}
    assert "fal_webhooks" in names


def test_connection_add_then_the_hook_uses_it(airflow: AirflowEnv, emulator: FalEmulator) -> None:
    conn = json.loads(emulator.connection_json())
    airflow.run(
        "connections",
        "add",
        "fal_default",
        "--conn-type",
        "fal",
        "--conn-password",
        KEY,
        "--conn-host",
        conn["host"],
        "--conn-extra",
        json.dumps(conn["extra"]),
    )
    stored = airflow.run("connections", "get", "fal_default", "-o", "json").stdout
    assert '"conn_type": "fal"' in stored.replace("'", '"') or '"fal"' in stored
    assert KEY not in airflow.run("connections", "list", "-o", "table").stdout

    # `airflow connections test` resolves the type to FalHook through the provider info and runs
    # its test_connection() against the emulator with the stored key.
    airflow.extra_env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    tested = airflow.run("connections", "test", "fal_default")
    assert "Connection success!" in tested.stdout, tested.stdout + tested.stderr
    assert KEY not in tested.stdout + tested.stderr

    # The emulator only accepts KEY: a connection with another key must fail the same command.
    wrong = "wrong-id:wrong-secret"
    airflow.run(
        "connections",
        "add",
        "fal_wrong",
        "--conn-type",
        "fal",
        "--conn-password",
        wrong,
        "--conn-host",
        conn["host"],
        "--conn-extra",
        json.dumps(conn["extra"]),
    )
    rejected = airflow.run("connections", "test", "fal_wrong", check=False)
    assert "Connection success!" not in rejected.stdout
    assert "rejected the API key of connection 'fal_wrong'" in rejected.stdout + rejected.stderr
    assert wrong not in rejected.stdout + rejected.stderr


def test_hook_outside_a_task_explains_where_connections_come_from(airflow: AirflowEnv) -> None:
    """A script sees no metadata-DB connections in Airflow 3; the error must say so, not blame the key."""
    env = {k: v for k, v in airflow.env.items() if not k.startswith(("FAL_KEY", "AIRFLOW_CONN_"))}
    script = "from fal_provider.hooks.fal import FalHook\nFalHook().settings\n"
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "is not defined here" in proc.stderr and "AIRFLOW_CONN_FAL_DEFAULT" in proc.stderr
