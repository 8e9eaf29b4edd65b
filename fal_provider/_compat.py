"""Imports that moved between Airflow 3.1 and 3.3, resolved once.

The Task SDK became the home of the exception classes and the operator base classes; older 3.x
releases still expose some of them only from ``airflow.exceptions``. Keeping the fallbacks here
means the rest of the provider imports one name and never branches on versions.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # pragma: no cover - Airflow < 3.2
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]

AIRFLOW_VERSION = Version(Version(version("apache-airflow-core")).base_version)
#: ``BaseTrigger.on_kill`` and ``context["task_state_store"]`` arrived in Airflow 3.3.
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= Version("3.3.0")

__all__ = ["AIRFLOW_VERSION", "AIRFLOW_V_3_3_PLUS", "AirflowException", "AirflowFailException"]
