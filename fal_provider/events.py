"""The events a wait for a fal request ends with: their shape, how they are built, how they are read.

Every way of waiting ends in the same small dict: the trigger's poll, stream and webhook modes,
the webhook receiver waking a task from the API server, and the worker-side waiter. It holds the
status and the request reference, never the result (the worker fetches it), so it stays small in
the metadata database. :func:`validate_event` is the one check every ``execute_complete`` runs
first; it accepts only the statuses listed here (an allow-list): two community providers shipped
bugs where a ``cancelled`` or ``None`` event was treated as success.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fal_provider import exceptions as fal_exceptions
from fal_provider._compat import AirflowException
from fal_provider.exceptions import FalError
from fal_provider.models import CompletedStatus, FalRequestRef

#: Statuses an event may carry; anything else is a bug and fails loudly in :func:`validate_event`.
EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error"})


def completed_event(status: CompletedStatus, ref: FalRequestRef) -> dict[str, Any]:
    """The event for a finished request: status and fal's error text, never the result."""
    if status.failed:
        return {
            "status": "failed",
            "request": ref.to_xcom(),
            "error": status.error,
            "error_type": status.error_type,
        }
    event: dict[str, Any] = {"status": "success", "request": ref.to_xcom()}
    if status.metrics:  # fal's timings (``inference_time``), for lineage; small
        event["metrics"] = dict(status.metrics)
    return event


def backstop_event(status: CompletedStatus, ref: FalRequestRef) -> dict[str, Any]:
    """A finished request found by the webhook mode's slow status check (no callback came)."""
    return {**completed_event(status, ref), "source": "backstop"}


def webhook_event(
    *, succeeded: bool, error: str | None, request: Mapping[str, Any] | None, request_id: str
) -> dict[str, Any]:
    """The event for fal's verified callback.

    ``OK`` (even with a ``payload_error``: the result can still be fetched from the queue) is
    ``success``; ``ERROR`` is ``failed`` with fal's error text.
    """
    event: dict[str, Any] = {
        "status": "success" if succeeded else "failed",
        "request": dict(request) if request else {"request_id": request_id},
        "source": "webhook",
    }
    if not succeeded:
        event["error"] = error or "fal reported the request as failed"
        event["error_type"] = "webhook_error"
    return event


def timeout_event(ref: FalRequestRef, end_time: float | None) -> dict[str, Any]:
    return {
        "status": "timeout",
        "request": ref.to_xcom(),
        "error": f"fal request {ref.request_id} did not finish before the deadline (epoch {end_time})",
        "error_type": "timeout",
    }


def error_event(ref: FalRequestRef, err: BaseException) -> dict[str, Any]:
    """Describe an error that ended the wait so the worker can re-raise the same class."""
    return {
        "status": "error",
        "request": ref.to_xcom(),
        "error": str(err)[:2000],
        "error_type": getattr(err, "error_type", None),
        "error_class": type(err).__name__,
        "retryable": bool(getattr(err, "retryable", True)),
    }


def validate_event(event: Any) -> tuple[str, FalRequestRef]:
    """Return ``(status, ref)`` for a well-formed event; raise on anything else."""
    if not isinstance(event, dict):
        raise AirflowException(
            f"Expected a fal trigger event (a dict), got {type(event).__name__}: {event!r}"
        )
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise AirflowException(
            f"Unexpected fal trigger event status {status!r} (allowed: {sorted(EVENT_STATUSES)}): {event!r}"
        )
    try:
        ref = FalRequestRef.coerce(event.get("request"))
    except ValueError as err:
        raise AirflowException(f"fal trigger event without a valid request reference: {err}") from None
    return str(status), ref


def error_from_event(event: Mapping[str, Any]) -> Exception:
    """Rebuild the typed error an ``error`` event describes (only provider classes, by name)."""
    name = str(event.get("error_class") or "")
    cls = getattr(fal_exceptions, name, None)
    message = str(event.get("error") or "waiting for the fal request failed")
    if isinstance(cls, type) and issubclass(cls, FalError):
        return cls(message, error_type=event.get("error_type"))
    if event.get("retryable", True):
        return fal_exceptions.FalServerError(f"{name or 'Error'}: {message}")
    return fal_exceptions.FalPermanentError(f"{name or 'Error'}: {message}")
