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
