"""Pytest fixtures for the fal emulator, opt-in: ``pytest_plugins = ["fal_provider.emulator.pytest_plugin"]``
in a ``conftest.py`` (or ``pytest -p fal_provider.emulator.pytest_plugin``).

- ``fal_emulator``: one emulator per test session (started lazily on first use); every test that uses
  it gets a clean one: requests, files, counters, faults and runtime config are reset before the test.
- ``fal_emulator_conn``: the same emulator, with ``AIRFLOW_CONN_FAL_DEFAULT`` pointing at it.
- ``fal_dag_test``: ``fal_dag_test(dag, **dag_test_kwargs)`` prepares the metadata database and the
  serialized DAG that Airflow 3's ``dag.test()`` needs, runs ``dag.test()`` and returns the DAG run.

Importing this module stays cheap (uvicorn and the emulator are imported only inside the fixtures), so
enabling it costs nothing in sessions that never use an emulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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


@pytest.fixture
def fal_dag_test() -> Callable[..., Any]:
    """Run ``dag.test()`` on a DAG from any module (see ``testing.prepare_dag_test``)."""
    from fal_provider.emulator.testing import prepare_dag_test

    def run(dag: Any, **kwargs: Any) -> Any:
        return prepare_dag_test(dag).test(**kwargs)

    return run
