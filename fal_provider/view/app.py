"""The FastAPI app behind the task view, mounted on every API server by the plugin.

Unlike the webhook receiver (which fal calls with a signature instead of a login), this app
serves people: each call authenticates the Airflow user the way Airflow's own REST API does (the
``Authorization: Bearer`` token or the UI's session cookie, then the auth manager) and is answered
only if the auth manager lets that user read the DAG's task instances and XComs, the two things
the page shows. The UI loads it in an iframe on the same origin, so the session cookie comes along.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from fal_provider.view.data import hook_live_status, load_view
from fal_provider.view.render import render_message, render_page
from fal_provider.webhooks.urls import TaskIdentity

log = logging.getLogger(__name__)

#: Where the plugin mounts the app (its own prefix: the receiver owns ``/fal``).
URL_PREFIX = "/fal-view"
TASK_ROUTE = "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}"
#: The page's headers: no caching of what one user may see, no framing by other sites.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; img-src http: https: data:; media-src http: https: data:; "
        "style-src 'unsafe-inline'; frame-ancestors 'self'"
    ),
    "Referrer-Policy": "no-referrer",
}


async def current_user(request: Request) -> Any:
    """The Airflow user of this call, as Airflow's REST API resolves it (401/403 otherwise)."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    return await get_user(request, None, bearer)


def authorize(user: Any, dag_id: str) -> None:
    """403 unless the auth manager lets ``user`` read this DAG's task instances and XComs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    manager = get_auth_manager()
    for entity in (DagAccessEntity.TASK_INSTANCE, DagAccessEntity.XCOM):
        if not manager.is_authorized_dag(method="GET", access_entity=entity, details=details, user=user):
            raise HTTPException(status_code=403, detail="Forbidden")


def parse_map_index(raw: str | None) -> int:
    """The UI fills ``{MAP_INDEX}`` only for mapped tasks; anything else is the unmapped -1."""
    try:
        return int(raw) if raw is not None else -1
    except ValueError:
        return -1


def create_app() -> FastAPI:
    app = FastAPI(title="fal task view", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(TASK_ROUTE, response_class=HTMLResponse)
    async def task_view(request: Request, dag_id: str, run_id: str, task_id: str) -> HTMLResponse:
        user = await current_user(request)
        from starlette.concurrency import run_in_threadpool

        key = TaskIdentity(dag_id, run_id, task_id, parse_map_index(request.query_params.get("map_index")))
        await run_in_threadpool(authorize, user, dag_id)
        page, code = await run_in_threadpool(_page, key)
        return HTMLResponse(page, status_code=code, headers=_HEADERS)

    return app


def _page(key: TaskIdentity) -> tuple[str, int]:
    from airflow.utils.session import create_session

    with create_session() as session:
        view = load_view(key, session=session)
    if view is None:
        return render_message("Task instance not found", f"{key.dag_id} / {key.run_id} / {key.task_id}"), 404
    if view.request is not None:
        view.live = hook_live_status(view.request)
    return render_page(view), 200
