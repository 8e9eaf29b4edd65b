"""Pytest fixtures for the fal emulator, opt-in: ``pytest_plugins = ["fal_provider.emulator.pytest_plugin"]``
in a ``conftest.py`` (or ``pytest -p fal_provider.emulator.pytest_plugin``).

- ``fal_emulator``: one emulator per test session (started lazily on first use); every test that uses
  it gets a clean one: requests, files, counters, faults and runtime config are reset before the test.
- ``fal_emulator_conn``: the same emulator, with ``AIRFLOW_CONN_FAL_DEFAULT`` pointing at it.

Importing this module stays cheap (uvicorn and the emulator are imported only inside the fixtures), so
enabling it costs nothing in sessions that never use an emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fal_provider.emulator.testing import FalEmulator


@pytest.fixture(scope="session")
def _fal_emulator_session() -> Iterator[FalEmulator]:
    from fal_provider.emulator.testing import FalEmulator

    emulator = FalEmulator(ping_interval_s=1.0, webhook_base_delay_s=0.05)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def fal_emulator(_fal_emulator_session: FalEmulator) -> FalEmulator:
    """A running, freshly reset emulator (key ``emulator-key-id:emulator-key-secret``)."""
    _fal_emulator_session.reset()
    return _fal_emulator_session


@pytest.fixture
def fal_emulator_conn(fal_emulator: FalEmulator, monkeypatch: pytest.MonkeyPatch) -> FalEmulator:
    """The emulator, with Airflow's ``fal_default`` connection pointing at it for this test."""
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", fal_emulator.connection_json())
    return fal_emulator
