"""What the task view shows, gathered on the API server.

The database gives what the try recorded (XComs are cleared when a new try starts, so they always
belong to the task instance's current try); the hook adds fal's live status and logs. Nothing
here holds or returns the key: the hook keeps it inside its settings, and an error from fal is
shown by its class and message, which the hook never builds from credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fal_provider.webhooks.urls import TaskIdentity

#: XCom keys the view reads. ``fal_request`` / ``fal_request_url`` are pushed by the operators
#: before they wait (``operators/lifecycle.py``); ``fal_cost`` by the cost accounting when present.
REQUEST_KEY = "fal_request"
LINK_KEY = "fal_request_url"
COST_KEY = "fal_cost"
RESULT_KEY = "return_value"
_KEYS = (REQUEST_KEY, LINK_KEY, COST_KEY, RESULT_KEY)
#: Rendered template fields worth showing; ``headers`` may carry a proxy's own secrets, so never.
_INPUT_FIELDS = ("app_id", "path", "arguments", "request")
#: The live status lookup gets a short budget: a page must not hang on a slow fal.
LIVE_TIMEOUT_SECONDS = 10.0
ACTIVE_TI_STATES = frozenset({"queued", "scheduled", "running", "deferred", "up_for_retry", "restarting"})


@dataclass
class LiveStatus:
    """fal's answer to a status call with logs, or why there is none."""

    status: str | None = None
    queue_position: int | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    unavailable: str | None = None


@dataclass
class TaskView:
    """One task instance's fal request as the page shows it."""

    key: TaskIdentity
    state: str | None
    try_number: int | None
    operator: str | None
    start_date: datetime | None
    end_date: datetime | None
    request: dict[str, Any] | None = None
    link: str | None = None
    cost: Any = None
    result: Any = None
    has_result: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    live: LiveStatus | None = None

    @property
    def active(self) -> bool:
        """Still moving: the page refreshes itself while this holds."""
        if self.state in ACTIVE_TI_STATES:
            return True
        return self.live is not None and self.live.status in ("IN_QUEUE", "IN_PROGRESS")


def load_view(key: TaskIdentity, *, session: Any) -> TaskView | None:
    """What Airflow recorded for one task instance, or None when it has no such task instance.

    The live status is added by the caller after the session is closed, so a slow fal never holds
    a database connection."""
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    ti = session.scalar(
        select(TaskInstance).where(
            *_of_task(TaskInstance, key),
        )
    )
    if ti is None:
        return None
    view = TaskView(
        key=key,
        state=str(ti.state.value if hasattr(ti.state, "value") else ti.state) if ti.state else None,
        try_number=ti.try_number,
        operator=ti.operator,
        start_date=ti.start_date,
        end_date=ti.end_date,
    )
    xcoms = _xcoms(key, session)
    request = xcoms.get(REQUEST_KEY)
    view.request = dict(request) if isinstance(request, Mapping) else None
    view.link = str(xcoms[LINK_KEY]) if xcoms.get(LINK_KEY) else None
    view.cost = xcoms.get(COST_KEY)
    view.has_result = RESULT_KEY in xcoms
    view.result = xcoms.get(RESULT_KEY)
    view.inputs = _rendered_inputs(key, session)
    return view


def _of_task(model: Any, key: TaskIdentity) -> tuple[Any, ...]:
    """The WHERE clauses that pick one task instance's rows of ``model`` (the three tables share
    the four key columns)."""
    return (
        model.dag_id == key.dag_id,
        model.run_id == key.run_id,
        model.task_id == key.task_id,
        model.map_index == key.map_index,
    )


def _xcoms(key: TaskIdentity, session: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.scalars(
        select(XComModel).where(
            *_of_task(XComModel, key),
            XComModel.key.in_(_KEYS),
        )
    )
    return {row.key: XComModel.deserialize_value(row) for row in rows}


def _rendered_inputs(key: TaskIdentity, session: Any) -> dict[str, Any]:
    """The rendered (and secret-masked) inputs Airflow stored for this task instance."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from sqlalchemy import select

    fields = session.scalar(
        select(RTIF.rendered_fields).where(
            *_of_task(RTIF, key),
        )
    )
    if not isinstance(fields, Mapping):
        return {}
    return {name: fields[name] for name in _INPUT_FIELDS if fields.get(name) not in (None, "", {})}


def hook_live_status(request: Mapping[str, Any]) -> LiveStatus:
    """fal's status with logs, through the hook of the connection the task used."""
    from fal_provider.hooks.fal import FalHook
    from fal_provider.models import FalRequestRef

    conn_id = str(request.get("conn_id") or FalHook.default_conn_name)
    hook = FalHook(conn_id, timeout=LIVE_TIMEOUT_SECONDS, retry_limit=1)
    try:
        status = hook.get_status(FalRequestRef.coerce(request), logs=True)
    except Exception as err:  # the page still shows what Airflow recorded
        return LiveStatus(unavailable=f"{type(err).__name__}: {str(err)[:300]}")
    finally:
        hook.close()
    data = status.model_dump()
    return LiveStatus(
        status=data.get("status"),
        queue_position=data.get("queue_position"),
        logs=[dict(entry) for entry in data.get("logs") or []],
        metrics=dict(data.get("metrics") or {}),
        error=data.get("error"),
        error_type=data.get("error_type"),
    )
