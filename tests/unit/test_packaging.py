"""What installing the provider does to a user's environment, read from the packaging metadata."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _entry_points() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]


def test_the_emulator_pytest_plugin_is_not_loaded_into_every_pytest_session() -> None:
    # A ``pytest11`` entry point would make every pytest run in the user's environment load it;
    # users opt in with ``pytest_plugins = ["fal_provider.emulator.pytest_plugin"]`` instead.
    assert "pytest11" not in _entry_points()


def test_the_provider_and_its_webhook_plugin_are_still_registered() -> None:
    points = _entry_points()
    assert points["apache_airflow_provider"] == {"provider_info": "fal_provider:get_provider_info"}
    assert points["airflow.plugins"] == {"fal_webhooks": "fal_provider.webhooks.plugin:FalWebhookPlugin"}
