"""A result too large for XCom is refused before it is read whole, over real HTTP.

The emulator runs as a subprocess here, so ``tracemalloc`` in this process measures the client
only: the emulator's own copy of an 8 MB result does not count. The echo app returns its input,
so an 8 MB input makes an 8 MB result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.emulator.testing import FalEmulator
from fal_provider.hooks.fal import FalHook
from fal_provider.models import FalRequestRef
from fal_provider.operators.fal import FalResultOperator
from fal_provider.operators.streaming import FalStreamOperator
from fal_provider.results import ResultTooLargeError
from tests.integration.streaming.conftest import task_context

KEY = "size-key:size-secret"
BODY_BYTES = 8 * 1024 * 1024
#: Well below the body: what reading the status and the refused result may allocate at most.
PEAK_LIMIT = 1024 * 1024


class RecordingTI:
    """The task instance the waiting operators push their request reference and link to."""

    task_id = "result"
    run_id = "manual__size"
    dag_id = "size"
    map_index = -1

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[str]:
    """A separate emulator process; yields its base URL."""
    cmd = [sys.executable, "-m", "fal_provider.emulator", "--port", "0", "--key", KEY]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert " on http://" in line, line
        yield line.split(" on ", 1)[1]
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def big_request(emulator_process: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FalRequestRef]:
    """A finished echo request whose result is an 8 MB JSON document."""
    base = emulator_process
    conn = {
        "conn_type": "fal",
        "host": f"{base}/queue",
        "password": KEY,
        "extra": {"run_url": f"{base}/run", "rest_url": f"{base}/rest", "cdn_url": f"{base}/cdn"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(conn))
    hook = FalHook()
    ref = hook.submit("emulator/echo", {"blob": "x" * BODY_BYTES, "seed": 7})
    for status in hook.iter_status(ref):  # the SSE status stream ends once the request completed
        last = status
    assert last.status == "COMPLETED"
    hook.close()
    yield ref


def peak_bytes(action: Callable[[], Any]) -> tuple[int, Any, BaseException | None]:
    """Peak memory allocated while ``action`` runs, its value, and the error it raised."""
    tracemalloc.start()
    value: Any = None
    error: BaseException | None = None
    try:
        value = action()
    except Exception as err:
        error = err
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, value, error


def result_operator(ref: FalRequestRef, **kwargs: Any) -> FalResultOperator:
    return FalResultOperator(task_id="result", request=ref.to_xcom(), deferrable=False, **kwargs)


def test_result_over_the_xcom_limit_is_refused_from_its_content_length(big_request: FalRequestRef) -> None:
    op = result_operator(big_request)  # no select, no output_path: all of it would go to XCom
    peak, _, error = peak_bytes(lambda: op.execute({"ti": RecordingTI()}))
    assert isinstance(error, ResultTooLargeError), error
    assert isinstance(error, AirflowFailException), "the same result is as large on every try"
    message = str(error)
    assert "select=" in message and "output_path=" in message
    assert str(len(json.dumps({"blob": "x" * BODY_BYTES, "seed": 7}, separators=(",", ":")))) in message
    assert peak < PEAK_LIMIT, f"peak {peak} bytes while refusing a {BODY_BYTES}-byte result"


def test_reading_the_whole_result_is_what_the_limit_saves(big_request: FalRequestRef) -> None:
    """The control: without a limit the same fetch holds the body (so the measure above is real)."""
    hook = FalHook()
    try:
        peak, value, error = peak_bytes(lambda: hook.get_result(big_request))
    finally:
        hook.close()
    assert error is None and value["seed"] == 7
    assert peak > BODY_BYTES


def test_with_select_the_whole_result_is_still_read(big_request: FalRequestRef) -> None:
    assert result_operator(big_request, select="seed").execute({"ti": RecordingTI()}) == 7


def test_with_output_path_the_whole_result_is_written(big_request: FalRequestRef, tmp_path: Path) -> None:
    manifest = result_operator(big_request, output_path=f"file://{tmp_path}").execute({"ti": RecordingTI()})
    written = json.loads(Path(manifest["result_path"].removeprefix("file://")).read_text())
    assert len(written["blob"]) == BODY_BYTES and written["seed"] == 7


def test_collected_stream_stops_once_past_the_xcom_limit(fal_emulator_conn: FalEmulator) -> None:
    op = FalStreamOperator(
        task_id="t",
        app_id="emulator/stream",
        arguments={"count": 100_000},
        collect="all",
        max_xcom_bytes=2_000,
        log_interval=60,
    )
    with pytest.raises(ResultTooLargeError) as info:
        op.execute(task_context())
    assert isinstance(info.value, AirflowFailException)
    events = int(str(info.value).split("after ", 1)[1].split(" event", 1)[0])
    assert events < 100, "stopped near the limit, not after the whole stream"
    assert "select=" in str(info.value)
