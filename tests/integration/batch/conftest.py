"""Fixtures for FalBatchOperator against the in-process emulator."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator


@pytest.fixture
def emu(fal_emulator_conn: FalEmulator) -> FalEmulator:
    """The emulator, with ``fal_default`` pointing at it."""
    return fal_emulator_conn


def batch_context(try_number: int = 1, run_id: str = "manual__batch", map_index: int = -1) -> dict[str, Any]:
    """What the batch operator reads of an Airflow context (no ``task_instance`` state: a SIGTERM
    guard asks for it only after a signal)."""
    ti = SimpleNamespace(task_id="batch", try_number=try_number, map_index=map_index, run_id=run_id)
    return {"ti": ti, "run_id": run_id}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    import json

    text = Path(str(path).removeprefix("file://")).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
