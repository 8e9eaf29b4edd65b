"""An auth manager for the UI tests: SimpleAuthManager, plus one user who may not see every DAG.

SimpleAuthManager's roles grant read access to all DAGs or none, so "allowed for this DAG, refused
for that one" needs a manager that looks at the DAG: ``outsider`` (role viewer) may read only the
DAGs listed in ``FAL_TEST_OUTSIDER_DAGS``. Everything else is SimpleAuthManager's.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

OUTSIDER = "outsider"
OUTSIDER_DAGS_ENV = "FAL_TEST_OUTSIDER_DAGS"


class DagScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if getattr(user, "username", None) == OUTSIDER:
            allowed = set(filter(None, os.environ.get(OUTSIDER_DAGS_ENV, "").split(",")))
            if details is None or details.id not in allowed:
                return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
