"""Test doubles for the operator/sensor/trigger unit tests: they isolate the waiting and completion
logic from HTTP. The real hook is exercised by the integration and e2e tests.

Every fake hook answers to ``FalHook``'s interface: ``make_hook`` is a ``create_autospec`` of it, and
a hand-written fake class goes through :func:`checked_fake`, which binds every call against the real
method's signature. So a renamed hook method, or a keyword the hook does not take, fails the test.
:func:`install_hook` is the one way a fake reaches an operator, a sensor or a trigger.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, TypeVar
from unittest.mock import MagicMock, NonCallableMagicMock, create_autospec

from airflow.triggers.base import BaseTrigger

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.exceptions import FalServerError
from fal_provider.hooks.fal import FalHook
from fal_provider.hooks.platform import FetchedResult
from fal_provider.models import FalRequestRef, parse_status
from fal_provider.operators.lifecycle import (
    SPEND_KEY,
    SPEND_VARIABLE_PREFIX,
    STATE_KEY,
    VARIABLE_PREFIX,
    RequestStore,
)

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
    """Where a task keeps its fal request across tries (it survives tries like the real one).

    It stands in for ``context["task_state_store"]`` on Airflow >= 3.3 and, without one, for the
    Variable that ``RequestStore`` falls back to (see ``RequestVariables``), so the reattach tests run
    against the store the installed Airflow really uses.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def make_hook(statuses: list[Any] | None = None, result: Any = None) -> Any:
    """A ``FalHook`` autospec: only its methods exist, and calls must fit their signatures."""
    hook = create_autospec(FalHook, instance=True, name="FalHook")
    hook.settings.queue_url = "http://127.0.0.1:9/queue"
    hook.submit.return_value = make_ref()
    hook.get_status.side_effect = list(statuses or [done()])
    hook.get_result.return_value = result if result is not None else {"images": [{"url": "http://x/a.png"}]}
    hook.cancel.return_value = "CANCELLATION_REQUESTED"
    # fetch_result is get_result plus the billed units: tests configure get_result (and units).
    hook.billable_units = None
    hook.fetch_result.side_effect = lambda ref, max_bytes=None: FetchedResult(
        hook.get_result(ref, max_bytes=max_bytes), hook.billable_units
    )
    hook.get_pricing.return_value = {}
    hook.estimate_cost.side_effect = FalServerError("no estimates in unit tests")
    return hook


def checked_fake(fake: Any) -> Any:
    """``fake`` with each public method it defines bound against ``FalHook``'s method of that name.

    A hand-written fake keeps its behaviour (and its loose ``**kwargs``), but a call the real hook
    would refuse raises ``TypeError``, and a method the real hook does not have fails right here.
    """
    for name, _ in inspect.getmembers(type(fake), callable):
        if name.startswith("_"):
            continue
        real = getattr(FalHook, name, None)
        assert callable(real), f"{type(fake).__name__}.{name}: FalHook has no method {name!r}"
        takes_self = inspect.isfunction(inspect.getattr_static(FalHook, name))
        setattr(fake, name, _bound_like(inspect.signature(real), takes_self, getattr(fake, name)))
    fake._checked_against_falhook = True
    return fake


def _bound_like(signature: inspect.Signature, takes_self: bool, method: Any) -> Any:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        signature.bind(*((None,) if takes_self else ()), *args, **kwargs)  # ``None`` stands for ``self``
        return method(*args, **kwargs)

    return call


Target = TypeVar("Target")


def install_hook(target: Target, hook: Any) -> Target:
    """Give an operator, a sensor or a trigger ``hook`` instead of a real one; returns ``target``.

    ``hook`` must be a ``FalHook`` autospec (``make_hook``, ``async_hook``) or a ``checked_fake``.
    Operators and the sensor cache their hook in a ``cached_property``, so the instance attribute
    wins; a trigger builds its hook in ``_hook()``.
    """
    is_spec = isinstance(hook, NonCallableMagicMock) and isinstance(hook, FalHook)
    assert is_spec or getattr(hook, "_checked_against_falhook", False) is True, (
        "fake hooks must be specced from FalHook: use make_hook()/async_hook() or checked_fake()"
    )
    if isinstance(target, BaseTrigger):
        target.__dict__["_hook"] = lambda: hook
    else:
        target.__dict__["hook"] = hook
    return target


class RequestVariables:
    """Task SDK ``Variable`` get/set/delete for RequestStore's fallback keys, backed by FakeStateStores.

    Values cross as JSON strings, as with a real Variable, so the fallback's own encoding is exercised.
    Other keys go to the real methods (``tests/unit/conftest.py`` installs this for every unit test).
    """

    def __init__(self, real_get: Any, real_set: Any, real_delete: Any) -> None:
        self.stores: dict[str, FakeStateStore] = {}
        self.raw_writes: list[tuple[str, str]] = []
        self._real_get, self._real_set, self._real_delete = real_get, real_set, real_delete

    def attach(self, key: str, store: FakeStateStore) -> None:
        self.stores[key] = store

    def get(self, key: str, default: Any = None, deserialize_json: bool = False) -> Any:
        slot = _slot_of(key)
        if slot is None:
            return self._real_get(key, default=default, deserialize_json=deserialize_json)
        value = self.stores[_store_key(key)].data.get(slot) if _store_key(key) in self.stores else None
        return default if value is None else json.dumps(value)

    def set(self, key: str, value: Any, description: str | None = None, serialize_json: bool = False) -> None:
        slot = _slot_of(key)
        if slot is None:
            self._real_set(key, value, description=description, serialize_json=serialize_json)
            return
        assert isinstance(value, str), "a Variable holds text: the fallback must encode the reference"
        self.raw_writes.append((key, value))
        self.stores.setdefault(_store_key(key), FakeStateStore()).data[slot] = json.loads(value)

    def delete(self, key: str) -> None:
        if not key.startswith(VARIABLE_PREFIX):
            self._real_delete(key)
            return
        if key in self.stores:
            self.stores[key].data.pop(STATE_KEY, None)


def _slot_of(key: str) -> str | None:
    """The ``task_state_store`` key a fallback Variable stands for (request or spend), else ``None``."""
    if key.startswith(VARIABLE_PREFIX):
        return STATE_KEY
    if key.startswith(SPEND_VARIABLE_PREFIX):
        return SPEND_KEY
    return None


def _store_key(key: str) -> str:
    """Both fallbacks of one task instance share its FakeStateStore (attached by the request key)."""
    return VARIABLE_PREFIX + key.rsplit(".", 1)[-1]


#: Set by the autouse fixture in ``tests/unit/conftest.py`` for the duration of each test.
REQUEST_VARIABLES: RequestVariables | None = None


def make_context(
    store: FakeStateStore | None = None, *, state_store: bool = AIRFLOW_V_3_3_PLUS
) -> dict[str, Any]:
    """A task context whose request store is ``store``: ``task_state_store`` where Airflow has one
    (>= 3.3), else the Variable fallback, as on a real worker of the installed version."""
    ti = MagicMock(name="ti", dag_id="d", run_id="r", task_id="t", map_index=-1)
    store = store if store is not None else FakeStateStore()
    if state_store:
        return {"ti": ti, "task_state_store": store}
    context: dict[str, Any] = {"ti": ti}
    assert REQUEST_VARIABLES is not None, "tests/unit/conftest.py installs the Variable fake"
    REQUEST_VARIABLES.attach(RequestStore(context).slot.variable_key, store)
    return context


def pushed(context: dict[str, Any]) -> dict[str, Any]:
    return {c.kwargs["key"]: c.kwargs["value"] for c in context["ti"].xcom_push.call_args_list}
