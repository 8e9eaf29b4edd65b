"""The one place that decides what a finished wait means.

The same handler serves a request that was already done before deferring, the non-deferrable
wait, ``execute_complete`` of every operator and the sensor's poke. It reads the event through
:func:`fal_provider.waiting.validate_event`, which accepts only the statuses it knows.
"""

from __future__ import annotations

import logging
from typing import Any

from fal_provider.exceptions import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalNotFoundError,
    FalTimeoutError,
    error_from_completed,
)
from fal_provider.models import FalRequestRef
from fal_provider.waiting import error_from_event, validate_event

log = logging.getLogger(__name__)

#: Errors that describe fetching the result rather than the request's own failure.
_FETCH_ERRORS = (FalNotFoundError, FalAuthError, FalConnectionError, FalTimeoutError)


def failure_error(hook: Any, ref: FalRequestRef, error: str | None, error_type: str | None) -> FalError:
    """Classify a failed request, preferring the error fal's result endpoint passes through.

    The result endpoint returns the model's own error answer (a 422 with a ``detail`` list for bad
    input), which says more than the status' ``error`` text and decides retryability. When it is
    unavailable (expired, network), the status' ``error`` / ``error_type`` decide.
    """
    try:
        hook.get_result(ref)
    except _FETCH_ERRORS as err:
        log.info("Could not fetch the error body of fal request %s (%s)", ref.request_id, err)
    except FalError as err:
        if err.request_id is None:
            err.request_id = ref.request_id
        return err
    return error_from_completed(error, error_type, app_id=ref.app_id, request_id=ref.request_id)


def cancel_quietly(hook: Any, ref: FalRequestRef, reason: str) -> None:
    """Cancel without letting a cancel problem hide the error that caused it."""
    try:
        outcome = hook.cancel(ref)
        log.info("Cancelled fal request %s (%s): %s", ref.request_id, reason, outcome)
    except Exception as err:
        log.warning("Could not cancel fal request %s (%s): %s", ref.request_id, reason, err)


def raise_unless_success(event: Any, hook: Any) -> FalRequestRef:
    """Return the request reference when the event says success; raise the right error otherwise.

    ``timeout`` cancels the request (nothing orphaned) and raises a retryable ``FalTimeoutError``;
    ``failed`` raises fal's classified error; ``error`` re-raises what stopped the wait (see
    :func:`wait_failed`).
    """
    status, ref = validate_event(event)
    if status == "success":
        return ref
    if status == "timeout":
        cancel_quietly(hook, ref, "timeout")
        raise FalTimeoutError(
            str(event.get("error") or f"fal request {ref.request_id} timed out"),
            error_type="timeout",
            request_id=ref.request_id,
        )
    if status == "failed":
        raise failure_error(hook, ref, event.get("error"), event.get("error_type"))
    raise wait_failed(hook, ref, error_from_event(event))


def wait_failed(hook: Any, ref: FalRequestRef, err: Exception) -> Exception:
    """Decide the fate of a request whose wait broke for a reason other than the request itself.

    A retryable error (fal or the network flaked too often) leaves the request running: the task's
    retry reattaches to it. A permanent one (e.g. the trigger could not read the connection) means
    no try will come back for it, so it is cancelled instead of running, and billing, unattended.
    Both say so in the task log.
    """
    if getattr(err, "retryable", True):
        log.warning(
            "Waiting for fal request %s failed (%s); the request is left running for the task's retry "
            "to reattach to",
            ref.request_id,
            err,
        )
    else:
        log.warning(
            "Waiting for fal request %s failed for good (%s); cancelling it so it does not run unattended",
            ref.request_id,
            err,
        )
        cancel_quietly(hook, ref, "wait failed")
    return err
