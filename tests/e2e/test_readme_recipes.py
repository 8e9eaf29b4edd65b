"""Every recipe in README.md, run from the README text itself, so the docs cannot drift.

Each fenced code block is one case:

* ``python`` whose first line is ``# <path>.py``: a file of a small pytest project (``conftest.py``,
  ``tests/test_my_dag.py``); the project is written out and pytest runs it, with the emulator
  fixtures the README shows.
* other ``python`` blocks: executed in a fresh interpreter with ``AIRFLOW_CONN_FAL_DEFAULT`` pointing
  at an emulator.
* ``bash`` blocks: run with bash in a throw-away ``AIRFLOW_HOME``. ``fal-emulator`` commands start
  the emulator in the background (on a free port instead of the printed one; every later command
  of the block has the port replaced too), ``$FAL_KEY`` is a dummy key.

A block that cannot run offline (installs from PyPI, ``make test`` itself, Docker) is preceded in
the README by ``<!-- recipe: skip (why) -->``; those are listed by ``test_skipped_recipes_say_why``.
``FAL_README_PATH`` runs another copy of the README (to try a change before it lands).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fal_provider.emulator.testing import FalEmulator, run_emulator
from tests.e2e.harness import REPO_ROOT, AirflowEnv, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

README = Path(os.environ.get("FAL_README_PATH") or REPO_ROOT / "README.md")
SKIP = re.compile(r"<!--\s*recipe:\s*skip\s*\((?P<why>[^)]*)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
FILE_HEADER = re.compile(r"^#\s*(?P<path>[\w./-]+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def file(self) -> str | None:
        match = FILE_HEADER.match(self.code.splitlines()[0]) if self.code.strip() else None
        return match["path"] if match and self.lang == "python" else None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'text'}"


def readme_blocks(text: str) -> list[Block]:
    """Fenced blocks in order, each with the skip reason of a marker right before it (blank lines allowed)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = SKIP.search(lines[before]) if before >= 0 else None
        blocks.append(
            Block(start + 1, match["lang"], "\n".join(body) + "\n", marker["why"] if marker else None)
        )
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUNNABLE = [b for b in BLOCKS if b.skip is None and b.lang in ("python", "bash") and b.file is None]
PROJECT = [b for b in BLOCKS if b.skip is None and b.file is not None]


def test_the_readme_has_recipes_and_every_block_is_run_or_skipped_with_a_reason() -> None:
    assert RUNNABLE and PROJECT, "README extraction found nothing to run"
    unknown = [b.id for b in BLOCKS if b.skip is None and b.lang not in ("python", "bash", "")]
    assert not unknown, (
        f"blocks in a language this test cannot run; mark them <!-- recipe: skip (...) -->: {unknown}"
    )
    for block in BLOCKS:
        if block.skip is not None:
            assert block.skip.strip(), f"{block.id}: a skip marker must say why"


def test_skipped_recipes_say_why() -> None:
    """The list of README blocks not executed offline, with their reasons (shown with ``-rA``)."""
    skipped = [f"{b.id}: {b.skip}" for b in BLOCKS if b.skip is not None]
    print("README blocks not run offline:\n" + "\n".join(skipped))
    untagged_text = [b.id for b in BLOCKS if b.lang == "" and b.skip is None]
    print("plain text blocks (layouts, not commands): " + ", ".join(untagged_text))


@pytest.fixture(scope="module")
def emulator() -> Iterator[FalEmulator]:
    with run_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: FalEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    dags = tmp_path_factory.mktemp("readme-dags")
    (dags / "readme_deferrable.py").write_text(DEFERRABLE_DAG)
    env = AirflowEnv(dags_folder=dags, env={"FAL_KEY": "readme-dummy-id:readme-dummy-secret"})
    env.extra_env.pop("AIRFLOW_CONN_FAL_DEFAULT", None)
    try:
        env.migrate()
        yield env
    finally:
        env.cleanup()


DEFERRABLE_DAG = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG
    from fal_provider.operators.fal import FalInferenceOperator

    with DAG("readme_deferrable", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
        FalInferenceOperator(task_id="image", app_id="fal-ai/flux/schnell",
                             arguments={"prompt": "a red barn"}, deferrable=True)
    """
)


def _python_env(emulator: FalEmulator, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_FAL_DEFAULT=emulator.connection_json(),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.lang == "python"], ids=lambda b: b.id)
def test_python_recipe(block: Block, emulator: FalEmulator, tmp_path: Path) -> None:
    script = tmp_path / "recipe.py"
    script.write_text(block.code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=_python_env(emulator, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"README line {block.line}:\n{block.code}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


def test_pytest_recipe_runs_as_printed(emulator: FalEmulator, tmp_path: Path) -> None:
    """The "Testing your own DAGs offline" files, written out and run with pytest."""
    for block in PROJECT:
        assert block.file is not None
        path = tmp_path / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code)
    assert any("def test_" in b.code for b in PROJECT), "the README shows no test to run"
    env = _python_env(emulator, tmp_path / "airflow-home")
    env.pop("AIRFLOW_CONN_FAL_DEFAULT")  # the README's fixture sets it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def _shell_parts(code: str, port: int) -> tuple[list[str], str]:
    """(background ``fal-emulator`` commands, the rest of the block as one script), port made free."""
    code = code.replace("8765", str(port))
    background: list[str] = []
    script: list[str] = []
    for line in code.splitlines():
        if line.startswith("fal-emulator"):
            background.append(line.split(" #")[0].strip())
        else:
            script.append(line)
    return background, "set -euo pipefail\n" + "\n".join(script) + "\n"


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.lang == "bash"], ids=lambda b: b.id)
def test_shell_recipe(block: Block, airflow: AirflowEnv, tmp_path: Path) -> None:
    port = free_port()
    background, script = _shell_parts(block.code, port)
    bin_dir = str(Path(sys.executable).parent)
    env = {**airflow.env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    servers = [
        subprocess.Popen(
            shlex.split(cmd), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for cmd in background
    ]
    try:
        for server in servers:
            assert server.stdout is not None
            banner = server.stdout.readline().decode()
            assert "listening on http://127.0.0.1:" in banner, banner
        airflow.run("connections", "delete", "fal_default", check=False)
        proc = subprocess.run(
            ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (
            f"README line {block.line}:\n{script}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
        if servers:
            _deferrable_dags_test_refuses_before_paying(airflow, port)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def _deferrable_dags_test_refuses_before_paying(airflow: AirflowEnv, port: int) -> None:
    """The README's promise for a metadata-DB connection under ``airflow dags test``: a deferrable
    task refuses before submitting, says what to do, and fal (the emulator) saw no submit."""
    import httpx

    proc = airflow.run("dags", "test", "readme_deferrable", check=False)
    output = proc.stdout + proc.stderr
    assert "nothing was submitted" in output and "AIRFLOW_CONN_FAL_DEFAULT" in output, output[-3000:]
    stats = httpx.get(f"http://127.0.0.1:{port}/_emulator/stats").json()
    assert stats["submits_total"] == 0
