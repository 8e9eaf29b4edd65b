"""One deployment per module: PostgreSQL, the emulator and four Airflow processes (slow to start)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.deployment.cluster import (
    DeploymentCluster,
    EmulatorProcess,
    PostgresServer,
    make_cluster_root,
)

#: flux stand-ins then take 6 s (schnell) and 12 s (dev); emulator/echo durations are unscaled.
LATENCY_SCALE = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[DeploymentCluster]:
    root = make_cluster_root()
    pg = PostgresServer()
    emulator = EmulatorProcess(root / "emulator", latency_scale=LATENCY_SCALE)
    airflow: DeploymentCluster | None = None
    try:
        pg.start()
        emulator.start()
        airflow = DeploymentCluster(pg, emulator)
        airflow.migrate()
        airflow.start_all()
        yield airflow
    finally:
        if airflow is not None:
            airflow.cleanup()
        emulator.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
