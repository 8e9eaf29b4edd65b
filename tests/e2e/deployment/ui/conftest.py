"""One Airflow for every UI test (task view in a browser, human review over REST), with real logins.

It reuses the session's PostgreSQL and emulator (``deployment_services``) and differs from the
other deployment modules in two ways: SimpleAuthManager is not in all-admins mode (users ``admin``
and ``outsider`` log in with passwords, through :class:`~tests.e2e.deployment.ui.auth.DagScopedAuthManager`),
and its DAG folder holds the view-test DAG plus the human-review example from ``dags/``, copied
as a user would deploy it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.deployment.cluster import DeploymentCluster
from tests.e2e.deployment.conftest import TEMPLATE_DATABASE, Services
from tests.e2e.deployment.ui.auth import OUTSIDER, OUTSIDER_DAGS_ENV
from tests.e2e.harness import AirflowCommandError

REPO = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
REVIEW_DAG_FILE = REPO / "dags" / "example_fal_human_review.py"
PASSWORDS = {"admin": "admin-pass-e2e", OUTSIDER: "outsider-pass-e2e"}
#: the outsider may read the review DAG but not the view DAG
OUTSIDER_DAGS = "example_fal_human_review"


class UICluster(DeploymentCluster):
    """A deployment whose REST helpers log in as a user instead of using all-admins tokens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        password_file = self.home / "passwords.json"
        password_file.write_text(json.dumps(PASSWORDS))
        self.extra_env.update(
            {
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{OUTSIDER}:viewer",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
                "AIRFLOW__CORE__AUTH_MANAGER": "tests.e2e.deployment.ui.auth.DagScopedAuthManager",
                OUTSIDER_DAGS_ENV: OUTSIDER_DAGS,
            }
        )
        self._tokens: dict[str, str] = {}

    def token_for(self, username: str) -> str:
        """A JWT from ``POST /auth/token`` with the user's password (as the login form does)."""
        if username not in self._tokens:
            body = {"username": username, "password": PASSWORDS[username]}
            response = httpx.post(f"{self.api_url}/auth/token", json=body, timeout=60)
            if response.status_code not in (200, 201):
                raise AirflowCommandError(f"login {username}: {response.status_code} {response.text}")
            self._tokens[username] = str(response.json()["access_token"])
        return self._tokens[username]

    def _token(self, *, refresh: bool = False) -> str:
        if refresh:
            self._tokens.pop("admin", None)
        return self.token_for("admin")

    def get_as(self, username: str | None, path: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token_for(username)}"} if username else {}
        return httpx.get(f"{self.api_url}{path}", headers=headers, timeout=60)


@pytest.fixture(scope="package")
def ui_cluster(deployment_services: Services) -> Iterator[UICluster]:
    dags = Path(tempfile.mkdtemp(prefix="fal-ui-dags-"))
    shutil.copy(HERE / "dags" / "fal_view_dags.py", dags)
    shutil.copy(REVIEW_DAG_FILE, dags)
    deployment_services.emulator.reset()
    deployment_services.pg.create_database("airflow_ui", template=TEMPLATE_DATABASE)
    airflow = UICluster(
        deployment_services.pg, deployment_services.emulator, database="airflow_ui", dags_folder=dags
    )
    try:
        airflow.start_all()
        airflow.wait_for_dags(["fal_view", "example_fal_human_review"])
        yield airflow
    finally:
        airflow.cleanup()
        shutil.rmtree(dags, ignore_errors=True)
