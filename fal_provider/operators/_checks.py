"""Checks of operator parameters that need no network, run before anything is paid for.

Every operator runs them twice: in ``__init__`` (DAG parse time) for each value that is already
known, and again in ``execute()`` after rendering, before the first call that could start paid
work. A value that is only known after rendering (a Jinja string, an ``XComArg``) is skipped at
parse time. Every failure is a :class:`~fal_provider.exceptions.FalInputError`: a ``ValueError``
for Python callers and a permanent error for Airflow, because the same input fails the same way
on every try and a retry would only spend money.

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
from fal_provider.results import StagedOutput, check_select, target_file, unwritable

#: Appended to "must render to ..." errors: the usual cause is a Jinja template rendered as text.
TEMPLATE_HINT = (
    " A Jinja template renders to a string: set render_template_as_native_obj=True on the DAG, "
    "or pass an XComArg / a literal instead."
)
#: Request options that are numbers: pydantic would read ``True`` as ``1``.
NUMERIC_OPTIONS = ("start_timeout", "max_queue_length", "object_lifecycle")


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


# --------------------------------------------------------------------------- numbers


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


def check_max_xcom_bytes(value: Any) -> int | None:
    """``None`` or ``0``: no limit; otherwise a byte count."""
    return check_number(value, "max_xcom_bytes", integer=True, minimum=0, allow_none=True)  # type: ignore[no-any-return]


def check_max_consecutive_errors(value: Any) -> int:
    """How many transient errors in a row a wait tolerates (``0``: none)."""
    return check_number(value, "max_consecutive_errors", integer=True, minimum=0)  # type: ignore[no-any-return]


def check_poll_intervals(poll_interval: Any, max_poll_interval: Any) -> None:
    check_number(poll_interval, "poll_interval", positive=True)
    check_number(max_poll_interval, "max_poll_interval", positive=True)
    if max_poll_interval < poll_interval:
        raise FalInputError(
            f"max_poll_interval ({max_poll_interval}) must be >= poll_interval ({poll_interval})"
        )


def check_option_numbers(options: Any) -> None:
    """Numeric request options given as booleans (``start_timeout=True``) are mistakes, not ``1``."""
    if not isinstance(options, Mapping):
        return
    for name in NUMERIC_OPTIONS:
        if isinstance(options.get(name), bool):
            raise FalInputError(
                f"Invalid fal request options: {name} must be a number, got {options[name]!r} "
                "(a bool is not a number of seconds or items)"
            )


# --------------------------------------------------------------------------- output_path


def storage_path(output_path: Any) -> Any:
    """``output_path`` as an ObjectStoragePath; an unknown scheme fails here, without any I/O."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_path, ObjectStoragePath):
        return output_path
    if not isinstance(output_path, str) or not output_path.strip():
        raise FalInputError(
            "output_path must be a URI or ObjectStoragePath (e.g. 'file:///data/fal/' or "
            f"'s3://conn@bucket/prefix/'), got {type(output_path).__name__} {output_path!r}"
        )
    try:
        path = ObjectStoragePath(output_path)
        _check_scheme(path.protocol)
    except Exception as err:
        raise FalInputError(
            f"output_path {output_path!r} is not a usable URI or ObjectStoragePath: {err}. Use a scheme "
            "Airflow's object storage knows (file://, s3://, gs://, ...; install the provider that "
            "brings it) or a local absolute path."
        ) from None
    return path


def _check_scheme(protocol: Any) -> None:
    """Older Airflow builds the path lazily and only fails on first use: ask fsspec's registry,
    which knows every scheme it can load (installed or not) without touching a filesystem."""
    import fsspec

    schemes = protocol if isinstance(protocol, tuple | list) else (protocol,)
    known = set(fsspec.available_protocols()) | {"file", "local"}
    unknown = [scheme for scheme in schemes if scheme and scheme not in known]
    if unknown:
        raise ValueError(f"unknown scheme {unknown[0]!r}")


def check_output_path(output_path: Any) -> None:
    """Parse-time part: the value is a path whose scheme is known (no filesystem is touched)."""
    if output_path is not None:
        storage_path(output_path)


def probe_output_path(output_path: Any, name: str | None) -> None:
    """Run-time part: the result's folder can be created and written, checked before paying.

    A temporary file is written where the result will go and removed again, together with any
    folders the probe created, so a probe leaves the location as it found it.
    """
    if output_path is None:
        return
    result_file = target_file(storage_path(output_path), name)
    output = StagedOutput(on_error=unwritable)
    try:
        output.stage(result_file.parent / ".fal-write-probe", b"")
    finally:
        output.rollback()


def check_result_rules(select: Any, output_path: Any, download_media: Any, max_xcom_bytes: Any) -> Any:
    """Parse-time checks of the result rules every model-output operator has; returns the limit."""
    if download_media and output_path is None:
        raise FalInputError("download_media=True needs output_path=... (where to copy the media files)")
    if not is_templated(select):
        check_select(select)
    if not is_templated(output_path):
        check_output_path(output_path)
    return check_max_xcom_bytes(max_xcom_bytes)


def check_rendered_result_rules(select: Any, output_path: Any) -> None:
    """Run-time checks of the rendered result rules, including that ``output_path`` is writable."""
    check_select(select)
    check_output_path(output_path)
    probe_output_path(output_path, None)


# --------------------------------------------------------------------------- headers


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


# --------------------------------------------------------------------------- model inputs


def check_submit_inputs(app_id: Any, arguments: Any, options: Any) -> None:
    """What the hook checks before a submit, run first so its failure is permanent.

    Uses the hook's own parsers (app id, options, JSON body), so the two can never disagree;
    imported late because the hook modules are heavy for DAG parsing.
    """
    from fal_provider.hooks._calls import build_options, encode_arguments
    from fal_provider.models import AppId

    check_option_numbers(options)
    with input_errors():
        app = AppId.parse(app_id)
        build_options(options)
        encode_arguments(arguments, app)
