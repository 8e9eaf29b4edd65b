"""Strict checking of the emulator's control inputs (admin bodies, CLI flags, test helpers).

A typo'd or mistyped knob (``count: "5"``, ``concurrency: 0``) must be refused whole, with the field
and the reason, before anything changes; accepting it would break every later call of the run.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)

#: Strict types (no "5" for 5, no true for 1), no unknown fields, no NaN/inf.
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class InvalidSettings(ValueError):
    """A control input that failed validation; ``errors`` lists ``{"field", "message", "type"}``.

    Messages never quote the rejected value, so a mistyped key cannot end up in a log or a reply.
    """

    def __init__(self, what: str, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        reasons = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        super().__init__(f"Invalid {what}: {reasons}")


def validated(model: type[M], data: Any, what: str) -> M:
    """``model`` built from ``data``, or :class:`InvalidSettings` naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidSettings(what, field_errors(exc)) from None


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "(body)",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_input=False, include_url=False, include_context=False)
    ]
