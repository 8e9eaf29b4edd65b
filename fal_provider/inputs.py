"""User input checked before anything is paid for, shared by the operators, the sensor and the wait policy.

Every task checks its parameters twice: in ``__init__`` (DAG parse time) for each value that is
already known, and again in ``execute()`` after rendering, before the first call that could start
paid work. A value that is only known after rendering (a Jinja string, an ``XComArg``) is skipped
at parse time (:func:`is_templated`). Every failure is a
:class:`~fal_provider.exceptions.FalInputError`: a ``ValueError`` for Python callers and a
permanent error for Airflow, because the same input fails the same way on every try and a retry
would only spend money.

Messages say what was wrong and how to fix it; they never echo a header value (it may be a
credential).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from fal_provider import headers as http_headers
from fal_provider.exceptions import FalError, FalInputError
from fal_provider.models import FalRequestRef

#: Appended to "must render to ..." errors: the usual cause is a Jinja template rendered as text.
TEMPLATE_HINT = (
    " A Jinja template renders to a string: set render_template_as_native_obj=True on the DAG, "
    "or pass an XComArg / a literal instead."
)


def is_templated(value: Any) -> bool:
    """True when a value is only known after rendering (a Jinja string or an XComArg)."""
    from airflow.sdk.definitions._internal.mixins import ResolveMixin

    if isinstance(value, ResolveMixin):
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_templated(v) for v in value)
    return False


@contextmanager
def input_errors() -> Iterator[None]:
    """Turn a local ``ValueError``/``TypeError`` into a :class:`FalInputError` with the same message.

    For checks shared with code that raises plain ``ValueError`` (models, trigger policy): an
    operator must fail them without spending retries, including when ``__init__`` runs at run time
    for a mapped task. Errors that already know their retry verdict (``FalError``) pass unchanged.
    """
    try:
        yield
    except FalError:
        raise
    except (ValueError, TypeError) as err:
        raise FalInputError(str(err)) from err


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    positive: bool = False,
    allow_none: bool = False,
) -> Any:
    """A real number (never a bool: ``True`` is not ``1`` second), optionally bounded; returns it."""
    if value is None and allow_none:
        return None
    kinds = int if integer else int | float
    wanted = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise FalInputError(
            f"{name} must be {wanted}{' or None' if allow_none else ''}, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise FalInputError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise FalInputError(f"{name} must be a positive {wanted.split()[-1]}, got {value!r}")
    if minimum is not None and value < minimum:
        raise FalInputError(f"{name} must be {wanted} >= {minimum:g}, got {value!r}")
    return value


def check_seconds(value: Any, name: str, *, allow_none: bool = True) -> float | None:
    """A positive duration in seconds or a ``timedelta``; returned as float seconds."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    result = check_number(value, name, positive=True, allow_none=allow_none)
    return None if result is None else float(result)


def check_headers(headers: Any) -> None:
    """Extra HTTP headers: a mapping of valid names to single-line text values.

    Values are never shown in the error: a header is where people put tokens.
    """
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        hint = TEMPLATE_HINT if isinstance(headers, str) else ""
        raise FalInputError(
            f"headers must be a dict of header names to values, got {type(headers).__name__}.{hint}"
        )
    for name, value in headers.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FalInputError(
                f"headers: the value of {name!r} must be a string, got {type(value).__name__}"
            )
    http_headers.check_headers(headers, "headers")


def coerce_request(request: Any) -> FalRequestRef:
    """A request reference (``FalRequestRef``, its XCom dict or JSON) given by the user."""
    try:
        return FalRequestRef.coerce(request)
    except ValueError as err:
        raise FalInputError(str(err)) from None
