"""The deployment fixtures: one PostgreSQL and one emulator per session, one Airflow per module.

Migrating Airflow's schema is the slowest step, so it runs once into a template database; each
module's Airflow gets its own database copied from it (``CREATE DATABASE ... TEMPLATE``, a file copy)
and its own AIRFLOW_HOME and processes, so one module's killed components and DAG runs never leak
into the next. The emulator is shared: tests tell their requests apart by the ``marker`` argument.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.deployment.cluster import (
    DeploymentCluster,
    EmulatorProcess,
    PostgresServer,
    make_cluster_root,
)

#: flux stand-ins then take 6 s (schnell) and 12 s (dev); emulator/echo durations are unscaled.
LATENCY_SCALE = 60.0
TEMPLATE_DATABASE = "airflow_template"


@dataclass
class Services:
    """What every module's Airflow shares: the database server and the fal emulator."""

    root: Path
    pg: PostgresServer
    emulator: EmulatorProcess

    @contextmanager
    def airflow(
        self, database: str, env: dict[str, str] | None = None, **topology: Any
    ) -> Iterator[DeploymentCluster]:
        """A running Airflow on a fresh copy of the migrated schema, and an emulator with no requests
        or counters from an earlier module; stopped on exit. ``env``: extra settings of every
        component (e.g. ``AIRFLOW__FAL__...``)."""
        self.emulator.reset()
        self.pg.create_database(database, template=TEMPLATE_DATABASE)
        airflow = DeploymentCluster(self.pg, self.emulator, database=database, **topology)
        airflow.extra_env.update(env or {})
        try:
            airflow.start_all()
            yield airflow
        finally:
            airflow.cleanup()


@pytest.fixture(scope="session")
def deployment_services() -> Iterator[Services]:
    root = make_cluster_root()
    pg = PostgresServer()
    emulator = EmulatorProcess(root / "emulator", latency_scale=LATENCY_SCALE)
    try:
        pg.start()
        emulator.start()
        pg.create_database(TEMPLATE_DATABASE)
        migrator = DeploymentCluster(pg, emulator, database=TEMPLATE_DATABASE)
        try:
            migrator.migrate()
        finally:
            migrator.cleanup()
        yield Services(root, pg, emulator)
    finally:
        emulator.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(deployment_services: Services, request: pytest.FixtureRequest) -> Iterator[DeploymentCluster]:
    """One api-server, scheduler, triggerer and dag-processor, on a database of this module's own."""
    module = request.module.__name__.rsplit(".", 1)[-1].lower()
    with deployment_services.airflow(f"airflow_{module}") as airflow:
        yield airflow
