"""Unit-test wiring: RequestStore's Variable fallback (Airflow < 3.3) talks to in-memory stores.

Outside a task runner the Task SDK ``Variable`` has no supervisor to talk to, so the fallback keys
are served by ``RequestVariables``; every other key still reaches the real methods.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.operators import fakes


@pytest.fixture(autouse=True)
def request_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakes.RequestVariables]:
    from airflow.sdk import Variable

    fake = fakes.RequestVariables(Variable.get, Variable.set, Variable.delete)
    monkeypatch.setattr(Variable, "get", fake.get)
    monkeypatch.setattr(Variable, "set", fake.set)
    monkeypatch.setattr(Variable, "delete", fake.delete)
    monkeypatch.setattr(fakes, "REQUEST_VARIABLES", fake)
    yield fake


@pytest.fixture(autouse=True)
def checked_trigger_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Operators in unit tests talk to a fake hook, so the pre-submit check that the trigger can
    resolve the connection (a real asynchronous lookup, tested on its own in
    ``tests/unit/operators/test_durable.py``) is replaced by a recorder of the ids checked."""
    checked: list[str] = []
    monkeypatch.setattr(
        "fal_provider.operators.fal.check_trigger_connection", lambda hook, conn_id: checked.append(conn_id)
    )
    yield checked
