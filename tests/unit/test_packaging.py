"""What installing the provider does to a user's environment, read from the packaging metadata."""

from __future__ import annotations

import re
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


# -- the connection form -------------------------------------------------------------------------


def _connection_type() -> dict[str, Any]:
    from fal_provider import get_provider_info

    (connection_type,) = get_provider_info()["connection-types"]
    return connection_type


def test_the_hook_reports_the_same_form_as_the_provider_info() -> None:
    from fal_provider.hooks.fal import FalHook

    form = _connection_type()["ui-field-behaviour"]
    assert FalHook.get_ui_field_behaviour() == {
        "hidden_fields": form["hidden-fields"],
        "relabeling": form["relabeling"],
        "placeholders": form["placeholders"],
    }
    assert FalHook.get_ui_field_behaviour()["hidden_fields"] == ["login", "schema", "port"]


def test_the_form_offers_every_extra_the_readme_documents() -> None:
    readme = (PYPROJECT.parent / "README.md").read_text()
    table = readme.split("| extra | default | what for |", 1)[1].split("\n\n", 1)[0]
    documented = {
        name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    assert "retry_min_wait" in documented
    assert documented <= set(_connection_type()["conn-fields"])
