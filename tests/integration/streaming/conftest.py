"""Fixtures for running the streaming and realtime operators against the in-process emulator."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator


@pytest.fixture
def emu(fal_emulator_conn: FalEmulator) -> FalEmulator:
    """The emulator, with ``fal_default`` pointing at it."""
    return fal_emulator_conn


def task_context(task_id: str = "t", map_index: int = -1) -> dict[str, Any]:
    """The bits of an Airflow context the operators read (for naming output files)."""
    return {"ti": SimpleNamespace(task_id=task_id, run_id="manual__it", map_index=map_index)}
