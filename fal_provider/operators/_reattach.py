"""Remember the submitted request across task tries, so a retry does not pay twice.

Where the reference lives:

* Airflow >= 3.3: ``context["task_state_store"]``, a per-task-instance store that survives retries
  (AIP-103). It is the intended home for exactly this.
* Older Airflow: XComs are cleared at the start of every new try, so they cannot carry a request
  id to the next try. An Airflow Variable keyed by dag / run / task / map index survives. It is
  deleted once the task succeeds, so clearing a finished task later submits a fresh request.

The decision on a new try: reattach when the stored request is still queued, running or already
succeeded (its result is paid for); resubmit when it failed, was cancelled or is unknown to fal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.exceptions import FalNotFoundError
from fal_provider.models import CompletedStatus, FalRequestRef
from fal_provider.triggers._wait import Status

log = logging.getLogger(__name__)

STATE_KEY = "fal_request"
VARIABLE_PREFIX = "fal_provider.request."


class RequestStore:
    """Read/write the request reference of one task instance, whatever the Airflow version."""

    def __init__(self, context: Any) -> None:
        self._state = context.get("task_state_store") if AIRFLOW_V_3_3_PLUS else None
        ti = context.get("ti")
        identity = [
            getattr(ti, "dag_id", None),
            getattr(ti, "run_id", None),
            getattr(ti, "task_id", None),
            getattr(ti, "map_index", -1),
        ]
        digest = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:40]
        self._variable_key = VARIABLE_PREFIX + digest

    def load(self) -> FalRequestRef | None:
        raw = self._state.get(STATE_KEY) if self._state is not None else self._variable_get()
        if not raw:
            return None
        try:
            return FalRequestRef.coerce(raw)
        except ValueError:
            log.warning("Ignoring an unreadable stored fal request reference: %r", raw)
            return None

    def save(self, ref: FalRequestRef) -> bool:
        """Remember the request for a later try; best effort, never fails the task.

        It runs right after a paid submit. Failing the task here would leave that request running
        with nobody waiting for it, and the retry would pay again anyway; waiting for it is better,
        and only a later failure of this try loses the reattach (logged).
        """
        try:
            if self._state is not None:
                self._state.set(STATE_KEY, ref.to_xcom())
            else:
                from airflow.sdk import Variable

                Variable.set(self._variable_key, json.dumps(ref.to_xcom()))
        except Exception as err:
            log.warning(
                "Could not store fal request %s for reattach on retry (%s: %s); waiting for it anyway. "
                "If this try fails, a retry submits a new request.",
                ref.request_id,
                type(err).__name__,
                err,
            )
            return False
        return True

    def clear(self) -> None:
        """Forget the request (after success); best effort, never fails the task."""
        try:
            if self._state is not None:
                self._state.delete(STATE_KEY)
            else:
                from airflow.sdk import Variable

                Variable.delete(self._variable_key)
        except Exception as err:
            log.warning("Could not clear the stored fal request reference: %s", err)

    def _variable_get(self) -> Any:
        from airflow.sdk import Variable

        try:
            return Variable.get(self._variable_key, default=None)
        except Exception as err:
            log.warning("Could not read the stored fal request reference: %s", err)
            return None


def reattach_status(hook: Any, ref: FalRequestRef) -> Status | None:
    """The stored request's status when it is worth waiting for, ``None`` when it must be resubmitted.

    The status is returned so the caller can go on from it without asking fal a second time.
    Transient errors while checking propagate: guessing "resubmit" could pay twice, and the
    task's own retry will ask again.
    """
    try:
        status = hook.get_status(ref)
    except FalNotFoundError:
        log.info("Stored fal request %s is unknown to fal; submitting a new one", ref.request_id)
        return None
    if isinstance(status, CompletedStatus) and status.failed:
        log.info("Stored fal request %s failed (%s); submitting a new one", ref.request_id, status.error_type)
        return None
    log.info("Reattaching to fal request %s (%s) from a previous try", ref.request_id, status.status)
    return status
