"""Integration-test wiring shared by the folders that run operators outside a task runner.

Below Airflow 3.3 an operator keeps its request (and its spend) in Task SDK Variables, which have
no supervisor to talk to here; the unit tests' in-memory ``RequestVariables`` serves those keys
(every other key reaches the real methods), so these tests run the same on every Airflow version.
"""

from __future__ import annotations

from tests.unit.conftest import request_variables  # noqa: F401  (an autouse fixture)
