"""The inputs of a submit (``app_id``, ``arguments``, request options): checked at parse time when
they are known, and coerced and checked again after rendering, the way the hook will check them,
before the paid POST.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fal_provider.exceptions import FalInputError
from fal_provider.models import TEMPLATE_HINT, AppId, RequestOptions, input_errors, is_templated

#: Request options that are numbers: pydantic would read ``True`` as ``1``.
NUMERIC_OPTIONS = ("start_timeout", "max_queue_length", "object_lifecycle")


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


def check_submit_inputs(app_id: Any, arguments: Any, options: Any) -> None:
    """What the hook checks before a submit, run first so its failure is permanent.

    Uses the hook's own parsers (app id, options, JSON body), so the two can never disagree;
    imported late because the hook modules are heavy for DAG parsing.
    """
    from fal_provider.hooks.fal import check_submit

    check_option_numbers(options)
    with input_errors():
        check_submit(app_id, arguments, options)


def merge_options(options: Any, overrides: Mapping[str, Any]) -> Any:
    """Combine ``options=`` with individual option kwargs; validate now if nothing is templated."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(options, RequestOptions):
        options = options.model_dump(exclude_none=True)
    if options is not None and not isinstance(options, Mapping):
        if given:
            raise FalInputError(
                "Pass request options either as options=... or as keyword arguments, not both"
            )
        if not is_templated(options):
            raise FalInputError(
                f"options must be a dict or RequestOptions, got {type(options).__name__}.{TEMPLATE_HINT}"
            )
        return options  # templated as a whole; validated at execute
    merged = {**dict(options or {}), **given}
    if not is_templated(merged):
        build_request_options(merged)
    return merged


def build_request_options(options: Any) -> RequestOptions:
    """Rendered ``options`` as ``RequestOptions``; any problem is a permanent input error."""
    if not isinstance(options, Mapping | RequestOptions | None):
        raise FalInputError(f"options must render to a dict, got {type(options).__name__}.{TEMPLATE_HINT}")
    check_option_numbers(options)
    with input_errors():
        return RequestOptions.build(options)  # type: ignore[arg-type]


def check_submit_params(app_id: Any, arguments: Any) -> None:
    """Parse-time checks of the submit inputs that are already known (the rest run in ``execute``)."""
    if not is_templated(app_id):
        with input_errors():
            AppId.parse(app_id)
    if arguments is not None and not is_templated(arguments):
        coerce_arguments(arguments)


def prepare_submit(app_id: Any, arguments: Any, options: Any) -> tuple[dict[str, Any], RequestOptions]:
    """Rendered submit inputs, checked the way the hook will check them, before the paid POST."""
    body = coerce_arguments(arguments)
    built = build_request_options(options)
    check_submit_inputs(app_id, body, built)
    return body, built


def coerce_arguments(arguments: Any) -> dict[str, Any]:
    """Rendered ``arguments`` as a dict; a JSON string (non-native templating) is accepted too."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    if not isinstance(arguments, Mapping):
        raise FalInputError(
            f"arguments must be a dict of model inputs (or a JSON object string), got "
            f"{type(arguments).__name__}: {str(arguments)[:200]!r}.{TEMPLATE_HINT}"
        )
    return dict(arguments)
