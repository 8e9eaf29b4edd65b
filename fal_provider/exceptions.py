"""Errors that know whether trying again can help.

Airflow retries a task on any exception except ``AirflowFailException``. Bad input (a 422, an
unknown app, a wrong key) fails the same way every time and a retry only spends money, so those
errors subclass :class:`FalPermanentError` (an ``AirflowFailException``). Everything that can heal
by itself (5xx, 429, timeouts, a lost runner) is a :class:`FalTransientError`, an ordinary
exception, so the task's ``retries`` apply. Users can also write ``retry_policy`` rules against
these classes.

Messages never contain the API key: they are built from fal's response bodies, which do not echo
credentials, and from request ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fal_provider._compat import AirflowException, AirflowFailException

#: Request-error types (fal docs "Request errors") that a later attempt can get past.
RETRYABLE_ERROR_TYPES = frozenset(
    {
        "request_timeout",
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
        "internal_server_error",
        "generation_timeout",
        "downstream_service_error",
        "downstream_service_unavailable",
    }
)
#: Model-error types fal documents as never retryable (the same input fails again).
PERMANENT_ERROR_TYPES = frozenset(
    {
        "content_policy_violation",
        "no_media_generated",
        "bad_request",
        "client_cancelled",
        "client_disconnected",
    }
)


class FalError(AirflowException):
    """Base of every fal error. ``retryable`` tells Airflow (and users' retry policies) what to do."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        detail: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = status_code
        self.error_type = error_type
        self.detail = detail
        self.request_id = request_id
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword attributes through pickling (multiprocessing, some executors).
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[FalError], message: str, state: dict[str, Any]) -> FalError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class FalTransientError(FalError):
    """Trouble that can pass: Airflow's ``retries`` apply."""

    retryable = True


class FalPermanentError(FalError, AirflowFailException):
    """Retrying cannot help: the task fails without using its retries."""

    retryable = False


class FalServerError(FalTransientError):
    """A 5xx from fal's gateway or a model that reported a retryable failure."""


class FalRateLimitError(FalTransientError):
    """429: too many concurrent requests, or ``fal_max_queue_length`` exceeded."""


class FalTimeoutError(FalTransientError):
    """The provider gave up waiting (HTTP timeout, or the task's ``timeout`` deadline)."""


class FalConnectionError(FalTransientError):
    """The connection failed or broke before fal answered."""


class FalRequestFailed(FalTransientError):
    """A queued request finished with ``error``; retryable unless the error type says otherwise."""


class FalStreamError(FalTransientError):
    """A stream or realtime session broke before it finished."""


class FalValidationError(FalPermanentError):
    """422: the model rejected the input. ``detail`` is fal's list of ``{loc, msg, type, ...}``."""


class FalContentPolicyError(FalValidationError):
    """The input or output was blocked by the model's content policy."""


class FalAuthError(FalPermanentError):
    """401/403: a missing, wrong or locked key (for example an exhausted balance)."""


class FalNotFoundError(FalPermanentError):
    """404: unknown app, path or request id."""


class FalBadRequestError(FalPermanentError):
    """400 and other 4xx that the same request will hit again."""


class FalPermanentRequestFailed(FalPermanentError):
    """A queued request finished with an error that the same input will hit again."""


class FalRequestCancelled(FalPermanentError):
    """The request was cancelled (by a user, ``on_kill`` or a timeout)."""


class FalMissingCredentialsError(FalPermanentError):
    """No key in the connection and none in the environment."""


class FalInputError(FalPermanentError, ValueError):
    """Local validation failed before anything was sent or paid for.

    Both a ``ValueError`` (what Python code checking arguments expects) and a
    :class:`FalPermanentError` (the same input fails the same way on every try, so Airflow spends no
    retries on it). The message says what was wrong and how to fix it, and never echoes a secret.
    """


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                msg = item.get("msg") or item.get("type") or "invalid"
                parts.append(f"{loc}: {msg}" if loc else str(msg))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, Mapping):
        return json.dumps(detail)[:500]
    return str(detail)[:500]


def _first_type(detail: Any) -> str | None:
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
        value = detail[0].get("type")
        return str(value) if value else None
    return None


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after") or headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        import time

        return max(0.0, when.timestamp() - time.time())


def error_from_response(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes | str | Any,
    *,
    context: str = "fal request",
    request_id: str | None = None,
) -> FalError:
    """Map an HTTP error answer from fal to the typed error a caller should raise.

    ``headers`` must be case-insensitive (``httpx.Headers``) or already lower-cased.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    parsed: Any = body
    if isinstance(body, str):
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body
    detail = parsed.get("detail", parsed) if isinstance(parsed, Mapping) else parsed
    error_type = (
        (parsed.get("error_type") if isinstance(parsed, Mapping) else None)
        or headers.get("x-fal-error-type")
        or _first_type(detail)
    )
    retryable_header = (headers.get("x-fal-retryable") or "").lower()
    text = _detail_text(detail) if detail not in (None, "") else f"HTTP {status_code}"
    message = f"{context} failed with HTTP {status_code}" + (f" ({error_type})" if error_type else "")
    message += f": {text}"
    if isinstance(parsed, Mapping) and parsed.get("status") in {"ALREADY_COMPLETED", "NOT_FOUND"}:
        message = f"{context} failed with HTTP {status_code}: {parsed['status']}"
    kwargs: dict[str, Any] = {
        "status_code": status_code,
        "error_type": error_type,
        "detail": detail,
        "request_id": request_id or headers.get("x-fal-request-id"),
        "retry_after": _parse_retry_after(headers),
    }
    cls: type[FalError]
    if retryable_header == "true" and status_code not in (401, 403, 404):
        cls = FalServerError if status_code >= 500 else FalRequestFailed
    elif status_code in (401, 403):
        cls = FalAuthError
    elif status_code == 404:
        cls = FalNotFoundError
    elif status_code == 429:
        cls = FalRateLimitError
    elif status_code in (408, 504) and headers.get("x-fal-request-timeout-type") != "user":
        cls = FalTimeoutError
    elif status_code == 422 or retryable_header == "false":
        cls = FalContentPolicyError if error_type == "content_policy_violation" else FalValidationError
    elif status_code == 499 or error_type in ("client_cancelled", "client_disconnected"):
        cls = FalRequestCancelled
    elif status_code >= 500 or error_type in RETRYABLE_ERROR_TYPES:
        cls = FalServerError
    else:
        cls = FalBadRequestError
    return cls(message, **kwargs)


def error_from_completed(
    error: str | None, error_type: str | None, *, app_id: str, request_id: str
) -> FalError:
    """The error a request that finished with ``error`` / ``error_type`` should raise."""
    text = error or "the request failed"
    message = f"fal request {request_id} on {app_id} failed" + (f" ({error_type})" if error_type else "")
    message += f": {text}"
    kwargs: dict[str, Any] = {"error_type": error_type, "detail": error, "request_id": request_id}
    if error_type in ("client_cancelled", "client_disconnected"):
        return FalRequestCancelled(message, **kwargs)
    if error_type in PERMANENT_ERROR_TYPES:
        return FalPermanentRequestFailed(message, **kwargs)
    return FalRequestFailed(message, **kwargs)
