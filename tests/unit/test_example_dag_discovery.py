"""Airflow 3.3 with ``load_examples=True`` (its default) imports each provider by its distribution
name to look for ``example_dags``: for this provider that import must work (no ERROR traceback at
start-up of every component), and the wheel must put the example DAGs where Airflow looks."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_the_distribution_name_imports_as_a_module() -> None:
    module = importlib.import_module("airflow-provider-fal".replace("-", "_"))
    assert module.get_provider_info()["package-name"] == "airflow-provider-fal"
    assert module.EXAMPLE_DAGS_FOLDER.parent == Path(module.__file__).parent


def test_airflows_example_discovery_logs_no_error_for_this_provider(caplog: pytest.LogCaptureFixture) -> None:
    manager = pytest.importorskip("airflow.dag_processing.bundles.manager")
    discover = getattr(manager, "_add_provider_example_dags_to_bundle", None)
    if discover is None:
        pytest.skip("this Airflow has no provider example-DAG discovery (added in 3.3)")
    with caplog.at_level(logging.ERROR):
        discover([])
    assert not [r for r in caplog.records if "airflow_provider_fal" in r.getMessage()]


def test_the_wheel_ships_the_example_dags_where_airflow_looks() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "airflow_provider_fal" in wheel["packages"]
    assert wheel["force-include"]["dags"] == "airflow_provider_fal/example_dags"
    assert list((REPO_ROOT / "dags").glob("example_fal_taskflow.py"))
