"""Imports that moved between Airflow 3.1 and 3.3, resolved once.

The Task SDK became the home of the exception classes, ``conf`` and the async secret masker;
Airflow 3.1 still exposes some of them only from ``airflow.exceptions`` / ``airflow.configuration``.
Keeping the fallbacks here means the rest of the provider (and its tests) imports one name and
never branches on versions. The floor, Airflow 3.1, is exercised by ``scripts/ci_floor.sh``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from packaging.version import Version

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # pragma: no cover - Airflow < 3.2
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef]

try:
    from airflow.sdk.exceptions import AirflowNotFoundException
except ImportError:  # pragma: no cover - Airflow < 3.2
    from airflow.exceptions import AirflowNotFoundException  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk.exceptions import AirflowSensorTimeout
except ImportError:  # pragma: no cover - Airflow < 3.2
    from airflow.exceptions import AirflowSensorTimeout  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # pragma: no cover - Airflow < 3.2
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk import conf
except ImportError:  # pragma: no cover - Airflow < 3.2
    from airflow.configuration import conf  # type: ignore[no-redef,attr-defined,assignment]

from airflow.sdk.log import mask_secret

try:
    from airflow.sdk.log import amask_secret
except ImportError:  # pragma: no cover - Airflow < 3.2

    async def amask_secret(secret: Any, name: str | None = None) -> None:  # type: ignore[misc]
        """Airflow 3.1's ``mask_secret`` is documented safe in async code.

        It masks in this process first; its blocking hand-off to the supervisor fails fast inside a
        running event loop and is swallowed, so it never stalls the triggerer's loop.
        """
        mask_secret(secret, name)


try:
    from airflow.sdk.bases.decorator import determine_kwargs
except ImportError:  # pragma: no cover - Airflow < 3.2 keeps it in core
    from airflow.utils.operator_helpers import determine_kwargs  # type: ignore[no-redef,attr-defined]


AIRFLOW_VERSION = Version(Version(version("apache-airflow-core")).base_version)
#: ``BaseTrigger.on_kill`` and ``context["task_state_store"]`` arrived in Airflow 3.3.
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= Version("3.3.0")

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_3_PLUS",
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "TaskDeferred",
    "amask_secret",
    "conf",
    "determine_kwargs",
    "mask_secret",
]
