"""Remember the submitted request across task tries, so a retry does not pay twice.

Where the reference lives:

* Airflow >= 3.3: ``context["task_state_store"]``, a per-task-instance store that survives retries
  (AIP-103) and expires by Airflow's own retention. It is the intended home for exactly this.
* Older Airflow: XComs are cleared at the start of every new try, so they cannot carry a request
  id to the next try. An Airflow Variable keyed by dag / task / map index survives. It records the
  run it belongs to, so a new DAG run never reuses it, and that run's first submit overwrites it:
  one small Variable per task, not one per run. Two runs of the same task waiting at the same time
  share the Variable; the later submit wins, and the earlier run's retry (if one is needed) then
  submits afresh instead of reattaching.

The reference is kept until the success is durable, which only Airflow knows: the task returns its
result before Airflow records the success, and a worker that dies in between (or a terminal state
Airflow refuses) leads to another try. So it is never cleared on success; the next try of the same
task instance finds the request already succeeded and fetches its result again, at no cost.

The decision on a new try: reattach when the stored request was submitted with the same inputs
(fingerprint of app id, path, arguments and options) and is still queued, running or already
succeeded (its result is paid for); resubmit when the inputs changed, or it failed, was cancelled
or is unknown to fal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.exceptions import FalNotFoundError
from fal_provider.models import CompletedStatus, FalRequestRef
from fal_provider.waiting import Status

log = logging.getLogger(__name__)

STATE_KEY = "fal_request"
VARIABLE_PREFIX = "fal_provider.request."


def submission_fingerprint(app_id: str, path: str, arguments: Mapping[str, Any], options: Any) -> str:
    """A digest of what a submit pays for: a stored request is reused only for the same inputs."""
    if hasattr(options, "model_dump"):
        options = options.model_dump(exclude_none=True)
    material = json.dumps([app_id, path or "", arguments, options], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class StoredRequest:
    """What a try left for the next one: the request and the fingerprint of its inputs.

    ``ref`` is ``None`` for an intent (written just before the POST) that no request id replaced:
    the try died between sending the submit and saving fal's answer, so fal may be running (and
    billing) a request nobody knows the id of; :mod:`~fal_provider.operators.orphans` looks for it.
    """

    ref: FalRequestRef | None
    fingerprint: str | None = None
    intent_at: float | None = None
    input_sha: str | None = None


class RequestStore:
    """Read/write the request reference of one task instance, whatever the Airflow version."""

    def __init__(self, context: Any) -> None:
        self._state = context.get("task_state_store") if AIRFLOW_V_3_3_PLUS else None
        ti = context.get("ti")
        self._run_id = str(getattr(ti, "run_id", None))
        identity = [
            getattr(ti, "dag_id", None),
            getattr(ti, "task_id", None),
            getattr(ti, "map_index", -1),
        ]
        digest = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:40]
        self._variable_key = VARIABLE_PREFIX + digest

    def load(self) -> StoredRequest | None:
        raw = self._state.get(STATE_KEY) if self._state is not None else self._variable_get()
        if not raw:
            return None
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                pass
        record = raw if isinstance(raw, Mapping) else {}
        if "request" not in record:  # written by an older provider version: the bare reference
            record = {"request": raw}
        if record.get("run_id") not in (None, self._run_id):
            log.info(
                "The stored fal request belongs to DAG run %s, not this one; ignoring it", record["run_id"]
            )
            return None
        if record["request"] is None and record.get("intent_at") is not None:
            return StoredRequest(
                None, record.get("fingerprint"), float(record["intent_at"]), record.get("input_sha")
            )
        try:
            ref = FalRequestRef.coerce(record["request"])
        except ValueError:
            log.warning("Ignoring an unreadable stored fal request reference: %r", raw)
            return None
        fingerprint = record.get("fingerprint")
        return StoredRequest(ref, str(fingerprint) if fingerprint else None)

    def save(self, ref: FalRequestRef, fingerprint: str | None = None) -> bool:
        """Remember the request for a later try; best effort, never fails the task.

        It runs right after a paid submit. Failing the task here would leave that request running
        with nobody waiting for it, and the retry would pay again anyway; waiting for it is better,
        and only a later failure of this try loses the reattach (logged).
        """
        record = {"run_id": self._run_id, "request": ref.to_xcom(), "fingerprint": fingerprint}
        return self._write(
            record,
            f"Could not store fal request {ref.request_id.replace('%', '%%')} for reattach on retry (%s: %s); waiting for "
            "it anyway. If this try fails, a retry submits a new request.",
        )

    def save_intent(self, fingerprint: str, input_sha: str, at: float) -> bool:
        """Record, before the POST, that this try is about to pay for a request with these inputs.

        Best effort like :meth:`save`: a store that cannot be written loses the reattach anyway (the
        request id cannot be saved either), and refusing to run inference over it would turn a
        bookkeeping outage into failed pipelines. It is logged, and the try goes on.
        """
        record = {
            "run_id": self._run_id,
            "request": None,
            "fingerprint": fingerprint,
            "input_sha": input_sha,
            "intent_at": at,
        }
        return self._write(
            record,
            "Could not record the intent to submit (%s: %s); if this try dies before fal answers, "
            "a retry cannot look for the request it sent",
        )

    def _write(self, record: dict[str, Any], failure: str) -> bool:
        try:
            if self._state is not None:
                self._state.set(STATE_KEY, record)
            else:
                from airflow.sdk import Variable

                Variable.set(self._variable_key, json.dumps(record))
        except Exception as err:
            log.warning(failure, type(err).__name__, err)
            return False
        return True

    def _variable_get(self) -> Any:
        from airflow.sdk import Variable

        try:
            return Variable.get(self._variable_key, default=None)
        except Exception as err:
            log.warning("Could not read the stored fal request reference: %s", err)
            return None


def reattach_status(hook: Any, stored: StoredRequest, fingerprint: str | None) -> Status | None:
    """The stored request's status when it is worth waiting for, ``None`` when it must be resubmitted.

    The status is returned so the caller can go on from it without asking fal a second time.
    Transient errors while checking propagate: guessing "resubmit" could pay twice, and the
    task's own retry will ask again.
    """
    ref = stored.ref
    if ref is None:
        return None
    if fingerprint and stored.fingerprint and stored.fingerprint != fingerprint:
        log.info(
            "Stored fal request %s was submitted with other inputs (app, path, arguments or options "
            "changed since); submitting a new one",
            ref.request_id,
        )
        return None
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
