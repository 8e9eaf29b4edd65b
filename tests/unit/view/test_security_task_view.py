"""The task view shows a task only to who may read it, escapes what it shows, never shows the key."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from fal_provider.view import app as view_app
from fal_provider.view.data import LiveStatus, TaskView, hook_live_status
from fal_provider.view.render import render_page, safe_media_url
from fal_provider.webhooks.urls import TaskIdentity

KEY = TaskIdentity("dag", "run", "task")


def _manager(allowed: set[str]) -> Any:
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager

    manager = mock.create_autospec(BaseAuthManager, instance=True)
    manager.is_authorized_dag.side_effect = lambda *, access_entity, **_: access_entity.name in allowed
    return manager


@pytest.fixture
def no_db(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.models.dag import DagModel

    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, session=None: None))


@pytest.mark.parametrize("allowed", [set(), {"TASK_INSTANCE"}, {"XCOM"}])
def test_refused_without_both_task_instance_and_xcom_read_access(
    allowed: set[str], monkeypatch: pytest.MonkeyPatch, no_db: None
) -> None:
    manager = _manager(allowed)
    monkeypatch.setattr("airflow.api_fastapi.app.get_auth_manager", lambda: manager)
    with pytest.raises(HTTPException) as refused:
        view_app.authorize(object(), "dag")
    assert refused.value.status_code == 403
    details = manager.is_authorized_dag.call_args.kwargs["details"]
    assert details.id == "dag" and manager.is_authorized_dag.call_args.kwargs["method"] == "GET"


def test_allowed_with_both(monkeypatch: pytest.MonkeyPatch, no_db: None) -> None:
    monkeypatch.setattr(
        "airflow.api_fastapi.app.get_auth_manager", lambda: _manager({"TASK_INSTANCE", "XCOM"})
    )
    view_app.authorize(object(), "dag")


def test_no_login_or_a_bad_token_gets_no_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from jwt import InvalidTokenError

    manager = _manager({"TASK_INSTANCE", "XCOM"})
    manager.get_user_from_token.side_effect = InvalidTokenError("bad")
    monkeypatch.setattr("airflow.api_fastapi.core_api.security.get_auth_manager", lambda: manager)
    page = mock.Mock(side_effect=AssertionError("no page may be built"))
    monkeypatch.setattr(view_app, "_page", page)
    client = TestClient(view_app.create_app())
    assert client.get("/dags/d/runs/r/tasks/t").status_code == 401
    assert client.get("/dags/d/runs/r/tasks/t", headers={"Authorization": "Bearer forged"}).status_code == 403
    assert client.get("/dags/d/runs/r/tasks/t", cookies={"_token": "forged"}).status_code == 403


def test_markup_from_dags_models_and_fal_is_escaped_and_scripts_links_refused() -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    view = TaskView(
        key=TaskIdentity(evil, "run", "task"), state="success", try_number=1, operator=None,
        start_date=None, end_date=None,
        request={"app_id": "a/b", "request_id": evil},
        link="javascript:alert(3)",
        result={"images": [{"url": "javascript:alert(4)", "content_type": "image/png"}], "caption": evil},
        has_result=True, inputs={"arguments": {"prompt": evil}},
        live=LiveStatus(status="COMPLETED", logs=[{"message": evil}], error=evil),
        cost={"note": evil},
    )  # fmt: skip
    page = render_page(view)
    assert "<script>" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert "javascript:" not in page.split("<pre>")[0], "no javascript: link or preview"
    assert 'id="fal-link"' not in page and "<img" not in page
    assert safe_media_url("data:text/html;base64,PHNjcmlwdD4=") is None
    assert safe_media_url(" JAVASCRIPT:alert(1)") is None


def test_live_status_errors_never_carry_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "view-key-id:view-key-secret-123"
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAL_VIEW", f'{{"conn_type": "fal", "password": "{key}", "host": "http://127.0.0.1:9"}}'
    )
    live = hook_live_status({"app_id": "a/b", "request_id": "r", "conn_id": "fal_view"})
    assert live.unavailable and key not in live.unavailable and "view-key-secret" not in live.unavailable
