"""The inputs of a batch: a list, an XCom value or a JSONL file, checked whole before any POST.

Each input is either the model's argument dict itself, or an item ``{"arguments": {...}, "path":
"/sub", "options": {...}, "meta": ...}`` when one input needs its own path or request options (or a
model input is itself named ``arguments``). ``meta`` is copied to the item's output line and the
failed-inputs file uses the item form, so that file can be fed straight back in.

The whole input is validated in one pass before anything is submitted (a JSONL file is read twice,
line by line, so 100,000 inputs never sit in memory): the first bad item fails the task with a
:class:`~fal_provider.exceptions.FalInputError` naming its index, and nothing has been paid for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fal_provider.exceptions import FalInputError
from fal_provider.models import RequestOptions
from fal_provider.operators.fal import build_request_options, check_submit_inputs

_ITEM_KEYS = frozenset({"arguments", "path", "options", "meta"})


@dataclass(frozen=True)
class BatchItem:
    """One input, parsed: what to POST and where."""

    index: int
    arguments: dict[str, Any]
    path: str
    options: RequestOptions
    spec: dict[str, Any]
    meta: Any = None

    @property
    def fingerprint(self) -> str:
        """What this item pays for; a journal entry is reused only for the same fingerprint."""
        body = json.dumps(
            [self.path, self.arguments, self.options.model_dump(exclude_none=True)],
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]


class BatchInputError(FalInputError):
    """A batch input is unusable; the message names the item index and what to fix."""


def is_storage_path(value: Any) -> bool:
    return hasattr(value, "open") and hasattr(value, "fs")


def iter_raw(inputs: Any) -> Iterator[tuple[int, Any]]:
    """``(index, raw item)`` from a list/tuple, or from a JSONL ObjectStoragePath line by line."""
    if is_storage_path(inputs):
        yield from _iter_jsonl(inputs)
        return
    if isinstance(inputs, str | bytes | Mapping) or not isinstance(inputs, list | tuple):
        raise BatchInputError(
            "FalBatchOperator inputs must be a list of argument dicts, an XComArg that resolves to "
            "one, or an ObjectStoragePath to a JSONL file (one JSON object per line); got "
            f"{type(inputs).__name__}"
        )
    yield from enumerate(inputs)


def _iter_jsonl(path: Any) -> Iterator[tuple[int, Any]]:
    index = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                raise BatchInputError(
                    f"Batch input {index} (line {number} of {path}) is not valid JSON: {err}"
                ) from None
            yield index, value
            index += 1


def parse_item(
    index: int, raw: Any, *, app_id: str, path: str, shared_options: Mapping[str, Any]
) -> BatchItem:
    """One raw input as a :class:`BatchItem`, checked the way the hook will check its submit."""
    if not isinstance(raw, Mapping):
        raise BatchInputError(
            f"Batch input {index} must be a JSON object of model arguments (or an item with "
            f"'arguments'), got {type(raw).__name__}: {str(raw)[:120]!r}"
        )
    spec = dict(raw)
    is_item = isinstance(spec.get("arguments"), Mapping) and set(spec) <= _ITEM_KEYS
    arguments = dict(spec["arguments"]) if is_item else spec
    item_path = spec.get("path", path) if is_item else path
    own_options = spec.get("options") if is_item else None
    if not isinstance(item_path, str):
        raise BatchInputError(f"Batch input {index}: 'path' must be a string, got {item_path!r}")
    if own_options is not None and not isinstance(own_options, Mapping):
        raise BatchInputError(f"Batch input {index}: 'options' must be an object, got {own_options!r}")
    try:
        options = build_request_options({**shared_options, **(own_options or {})})
        check_submit_inputs(app_id, arguments, options)
    except FalInputError as err:
        raise BatchInputError(f"Batch input {index}: {err}") from None
    return BatchItem(
        index=index,
        arguments=arguments,
        path=item_path,
        options=options,
        spec=spec if is_item else {"arguments": arguments},
        meta=spec.get("meta") if is_item else None,
    )


def iter_items(
    inputs: Any, *, app_id: str, path: str, shared_options: Mapping[str, Any]
) -> Iterator[BatchItem]:
    for index, raw in iter_raw(inputs):
        yield parse_item(index, raw, app_id=app_id, path=path, shared_options=shared_options)


def validate_all(inputs: Any, *, app_id: str, path: str, shared_options: Mapping[str, Any]) -> int:
    """Check every input before the first POST; returns how many there are."""
    count = 0
    for _ in iter_items(inputs, app_id=app_id, path=path, shared_options=shared_options):
        count += 1
    return count
