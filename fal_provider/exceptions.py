"""Errors that know whether trying again can help.

Airflow retries a task on any exception except ``AirflowFailException``. Bad input (a 422, an
unknown app, a wrong key) fails the same way every time and a retry only spends money, so those
errors subclass :class:`FalPermanentError` (an ``AirflowFailException``). Everything that can heal
by itself (5xx, 429, timeouts, a lost runner) is a :class:`FalTransientError`, an ordinary
exception, so the task's ``retries`` apply. Users can also write ``retry_policy`` rules against
these classes.

Messages never contain the API key: they are built from fal's response bodies, which do not echo
credentials, and from request ids.

The tree (every public fal error lives in this module)::

    FalError (AirflowException)                  .http_status .error_type .detail .request_id .retry_after
    ├── FalTransientError                        a retry can help: Airflow's ``retries`` apply
    │   ├── FalServerError                       5xx, a retryable model error, X-Fal-Retryable: true
    │   ├── FalRateLimitError                    429
    │   ├── FalTimeoutError                      HTTP timeout, 408/504 that was not the user's, task deadline
    │   ├── FalConnectionError                   connection failed or broke before fal answered
    │   ├── FalRequestFailed                     a queued request finished with a retryable error
    │   ├── FalBatchIncomplete                   a batch under its success ratio, some items retryable
    │   ├── FalIntentNotRecorded                 the intent to submit could not be stored: nothing was sent
    │   └── FalStreamError                       a stream or realtime session broke
    │       └── FalRealtimeError                 an ``x-fal-error`` frame (``.error``, ``.reason``)
    └── FalPermanentError (AirflowFailException) the same input fails again: no retries spent
        ├── FalValidationError                   422
        │   └── FalContentPolicyError            blocked by the model's content policy
        ├── FalAuthError                         401/403
        ├── FalNotFoundError                     404
        ├── FalBadRequestError                   400 and other 4xx
        ├── FalPermanentRequestFailed            a queued request finished with a permanent error
        ├── FalRequestCancelled                  cancelled by a user, ``on_kill`` or a timeout
        ├── FalBatchFailed                       a batch under its success ratio, no item retryable
        ├── FalMissingCredentialsError           no key anywhere
        ├── FalBudgetExceeded                    a submit would pass ``max_cost`` or a named budget
        ├── FalOrphanedRequestError              a lost submit answer that cannot be matched (``on_orphan="fail"``)
        └── FalInputError (also ValueError)      local validation, before anything is sent
            ├── ResponseTooLarge                 an answer over the caller's ``max_bytes``
            └── ResultShapeError                 the result rules (select, output_path) cannot apply
                └── ResultTooLargeError          a result over ``max_xcom_bytes``

fal's Platform API (``api.fal.ai/v1``) answers errors in its own envelope,
``{"error": {"type", "message", "docs_url", "request_id"}}``; its ``type`` picks the class
(:data:`PLATFORM_ERROR_CLASSES`) the same way.

An HTTP error answer becomes one of these in three steps: :meth:`ErrorAnswer.parse` reads it,
:func:`classify` picks the class from one ordered table, :func:`error_message` words it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
        http_status: int | None = None,
        error_type: str | None = None,
        detail: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
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


class FalIntentNotRecorded(FalTransientError):
    """The record that this try is about to submit could not be written, so nothing was submitted.

    Paying without it could pay twice: a try whose task instance Airflow has already replaced (a
    stale execution after a lost resume) cannot write its state, and a request it submitted would
    be known to nobody. The retry writes the record and submits then.
    """


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


class FalBatchIncomplete(FalTransientError):
    """A batch ended under ``min_success_ratio`` and some failed items may succeed on the next try
    (it resumes from the journal and retries only those)."""


class FalStreamError(FalTransientError):
    """A stream or realtime session broke before it finished."""


class FalRealtimeError(FalStreamError):
    """The realtime endpoint sent an ``x-fal-error`` frame. ``error`` and ``reason`` are fal's fields.

    Refusals that no retry can fix (``NOT_FOUND``, ``Unauthorized``) are raised as
    :class:`FalNotFoundError` / :class:`FalAuthError` instead; fal's idle ``TIMEOUT`` is one of these.
    """

    def __init__(
        self, message: str, *, error: str, reason: str = "", payload: Mapping[str, Any] | None = None
    ):
        super().__init__(message, error_type=error, detail=dict(payload or {}))
        self.error = error
        self.reason = reason
        self.payload = dict(payload or {})


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


class FalBatchFailed(FalPermanentError):
    """A batch ended under ``min_success_ratio`` with failures no retry can fix (422, content
    policy, expired results); its failed-inputs file lists them for a corrected re-run."""


class FalMissingCredentialsError(FalPermanentError):
    """No key in the connection and none in the environment."""


class FalBudgetExceeded(FalPermanentError):
    """Submitting would pass a spending limit (``max_cost`` or a named budget); nothing was submitted.

    Permanent: a retry would meet the same limit. ``spent``, ``reserved`` and ``limit`` are in the
    price currency; the message says how to raise the limit.
    """

    def __init__(self, message: str, *, spent: float, reserved: float, limit: float, budget: str) -> None:
        super().__init__(message)
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.budget = budget


class FalOrphanedRequestError(FalPermanentError):
    """An earlier try sent a submit whose answer was lost, and fal's request history cannot tell
    which request it became; with ``on_orphan="fail"`` the task stops rather than risk paying twice."""


class FalInputError(FalPermanentError, ValueError):
    """Local validation failed before anything was sent or paid for.

    Both a ``ValueError`` (what Python code checking arguments expects) and a
    :class:`FalPermanentError` (the same input fails the same way on every try, so Airflow spends no
    retries on it). The message says what was wrong and how to fix it, and never echoes a secret.
    """


class ResponseTooLarge(FalInputError):
    """The answer is over the caller's ``max_bytes``; the same request is as large on every try."""

    def __init__(self, label: str, size: int, limit: int, *, declared: bool) -> None:
        how = "declares" if declared else "has at least"
        super().__init__(f"{label}: the answer {how} {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.declared = declared


class ResultShapeError(FalInputError):
    """The result rules cannot be applied; the same configuration fails again, so no retry."""


class ResultTooLargeError(ResultShapeError):
    """A result over ``max_xcom_bytes``; the message says how to keep it out of XCom."""


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


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
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


@dataclass(frozen=True)
class ErrorAnswer:
    """What an HTTP error answer from fal says, read once from its status, headers and body."""

    status_code: int
    headers: Mapping[str, str]
    parsed: Any
    detail: Any
    error_type: str | None
    #: The Platform API's envelope (``type``, ``message``, ``docs_url``, ``request_id``), if it used one.
    platform: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, status_code: int, headers: Mapping[str, str], body: bytes | str | Any) -> ErrorAnswer:
        """``headers`` must be case-insensitive (``httpx.Headers``) or already lower-cased."""
        parsed = _parse_body(body)
        envelope = platform_envelope(parsed)
        if envelope is not None:
            kind = envelope.get("type")
            return cls(
                status_code, headers, parsed, envelope.get("message"), str(kind or "") or None, envelope
            )
        detail = parsed.get("detail", parsed) if isinstance(parsed, Mapping) else parsed
        error_type = (
            (parsed.get("error_type") if isinstance(parsed, Mapping) else None)
            or headers.get("x-fal-error-type")
            or _first_type(detail)
        )
        return cls(status_code, headers, parsed, detail, error_type)

    @property
    def retryable_header(self) -> str:
        return (self.headers.get("x-fal-retryable") or "").lower()

    @property
    def user_timeout(self) -> bool:
        return self.headers.get("x-fal-request-timeout-type") == "user"


def platform_envelope(parsed: Any) -> Mapping[str, Any] | None:
    """The ``error`` object of a Platform API error answer, or ``None`` for any other body."""
    error = parsed.get("error") if isinstance(parsed, Mapping) else None
    if isinstance(error, Mapping) and ("type" in error or "message" in error):
        return error
    return None


def _parse_body(body: bytes | str | Any) -> Any:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return body
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body


def _content_policy_or_validation(answer: ErrorAnswer) -> type[FalError]:
    if answer.error_type == "content_policy_violation":
        return FalContentPolicyError
    return FalValidationError


def _retryable_by_header(answer: ErrorAnswer) -> type[FalError]:
    return FalServerError if answer.status_code >= 500 else FalRequestFailed


#: The Platform API's error ``type`` values and the class each one is.
PLATFORM_ERROR_CLASSES: Mapping[str, type[FalError]] = {
    "authorization_error": FalAuthError,
    "validation_error": FalValidationError,
    "not_found": FalNotFoundError,
    "rate_limited": FalRateLimitError,
    "server_error": FalServerError,
    "not_implemented": FalBadRequestError,
}


def _platform_class(answer: ErrorAnswer) -> type[FalError]:
    return PLATFORM_ERROR_CLASSES[answer.error_type or ""]


_Rule = Callable[[ErrorAnswer], bool]
_Pick = Callable[[ErrorAnswer], "type[FalError]"]

#: How an error answer is classified: the first rule that matches decides. Order matters: fal's
#: explicit ``X-Fal-Retryable: true`` wins over the status code, except for auth and not-found
#: answers, which no retry can fix.
_CLASSIFICATION: tuple[tuple[_Rule, _Pick], ...] = (
    (lambda a: a.retryable_header == "true" and a.status_code not in (401, 403, 404), _retryable_by_header),
    (lambda a: a.platform is not None and a.error_type in PLATFORM_ERROR_CLASSES, _platform_class),
    (lambda a: a.status_code in (401, 403), lambda a: FalAuthError),
    (lambda a: a.status_code == 404, lambda a: FalNotFoundError),
    (lambda a: a.status_code == 429, lambda a: FalRateLimitError),
    (lambda a: a.status_code in (408, 504) and not a.user_timeout, lambda a: FalTimeoutError),
    (lambda a: a.status_code == 422 or a.retryable_header == "false", _content_policy_or_validation),
    (
        lambda a: a.status_code == 499 or a.error_type in ("client_cancelled", "client_disconnected"),
        lambda a: FalRequestCancelled,
    ),
    (lambda a: a.status_code >= 500 or a.error_type in RETRYABLE_ERROR_TYPES, lambda a: FalServerError),
)


def classify(answer: ErrorAnswer) -> type[FalError]:
    """The error class for an answer: the first matching rule of the table, else a bad request."""
    for matches, pick in _CLASSIFICATION:
        if matches(answer):
            return pick(answer)
    return FalBadRequestError


def error_message(answer: ErrorAnswer, context: str) -> str:
    """A message that names the call, the status and what fal said (never the request's headers)."""
    head = f"{context} failed with HTTP {answer.status_code}"
    parsed = answer.parsed
    if isinstance(parsed, Mapping) and parsed.get("status") in {"ALREADY_COMPLETED", "NOT_FOUND"}:
        return f"{head}: {parsed['status']}"
    if answer.platform is not None:
        docs = answer.platform.get("docs_url")
        kind = f" ({answer.error_type})" if answer.error_type else ""
        return f"{head}{kind}: {answer.detail or 'no message'}" + (f" (see {docs})" if docs else "")
    detail = answer.detail
    text = _detail_text(detail) if detail not in (None, "") else f"HTTP {answer.status_code}"
    return head + (f" ({answer.error_type})" if answer.error_type else "") + f": {text}"


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
    answer = ErrorAnswer.parse(status_code, headers, body)
    platform_id = answer.platform.get("request_id") if answer.platform is not None else None
    return classify(answer)(
        error_message(answer, context),
        http_status=status_code,
        error_type=answer.error_type,
        detail=answer.detail,
        request_id=request_id or headers.get("x-fal-request-id") or platform_id,
        retry_after=parse_retry_after(headers),
    )


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
