"""Test doubles for the operator/sensor/trigger unit tests: they isolate the waiting and completion
logic from HTTP. The real hook is exercised by the integration and e2e tests."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

from fal_provider.models import FalRequestRef, parse_status

APP = "fal-ai/flux/schnell"
BASE = "http://127.0.0.1:9/queue/fal-ai/flux/requests"


def make_ref(request_id: str = "req-1", app_id: str = APP) -> FalRequestRef:
    return FalRequestRef(
        app_id=app_id,
        request_id=request_id,
        status_url=f"{BASE}/{request_id}/status",
        response_url=f"{BASE}/{request_id}",
        cancel_url=f"{BASE}/{request_id}/cancel",
    )


def queued(position: int = 3) -> Any:
    return parse_status({"status": "IN_QUEUE", "queue_position": position, "logs": None})


def running(logs: list[dict[str, Any]] | None = None) -> Any:
    return parse_status({"status": "IN_PROGRESS", "logs": logs})


def done(error: str | None = None, error_type: str | None = None) -> Any:
    body: dict[str, Any] = {"status": "COMPLETED", "logs": None, "metrics": {}}
    if error or error_type:
        body.update(error=error, error_type=error_type)
    return parse_status(body)


class FakeStateStore:
    """Stands in for ``context["task_state_store"]`` (it survives tries like the real one)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def make_hook(statuses: list[Any] | None = None, result: Any = None) -> MagicMock:
    hook = MagicMock(name="FalHook")
    hook.settings.queue_url = "http://127.0.0.1:9/queue"
    hook.submit.return_value = make_ref()
    hook.get_status.side_effect = list(statuses or [done()])
    hook.get_result.return_value = result if result is not None else {"images": [{"url": "http://x/a.png"}]}
    hook.cancel.return_value = "CANCELLATION_REQUESTED"
    return hook


def make_context(store: FakeStateStore | None = None) -> dict[str, Any]:
    ti = MagicMock(name="ti", dag_id="d", run_id="r", task_id="t", map_index=-1)
    return {"ti": ti, "task_state_store": store if store is not None else FakeStateStore()}


def pushed(context: dict[str, Any]) -> dict[str, Any]:
    return {c.kwargs["key"]: c.kwargs["value"] for c in context["ti"].xcom_push.call_args_list}
