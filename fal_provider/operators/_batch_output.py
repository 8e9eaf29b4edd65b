"""The end of a batch: one ``results.jsonl`` line per input, the failed inputs, the counts.

Every try appends to its own parts as items finish; this assembles them by streaming (two passes,
holding one int per succeeded item and one per failed item), so the output has exactly one line
per input index: its success if any try got one, else its latest failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fal_provider.operators._batch_store import dumps, read_parts


@dataclass(frozen=True)
class Assembled:
    counts: dict[str, int]
    retryable_failures: int
    results_path: str
    failed_inputs_path: str


def assemble(folder: Any) -> Assembled:
    parts = folder / "parts"
    succeeded, last_failure = _outcomes(parts)
    counts, retryable = _write_results(parts, folder / "results.jsonl", succeeded, last_failure)
    failed_inputs = folder / "failed_inputs.jsonl"
    _write_failed_inputs(parts, failed_inputs, succeeded)
    return Assembled(counts, retryable, str(folder / "results.jsonl"), str(failed_inputs))


def _indexed(parts: Any) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(position, index, line)`` of every results line that names an input index."""
    for position, line in enumerate(read_parts(parts, "results")):
        index = line.get("index")
        if isinstance(index, int):
            yield position, index, line


def _outcomes(parts: Any) -> tuple[set[int], dict[int, int]]:
    """Pass 1: the indexes that succeeded, and the position of each other index's last failure."""
    succeeded: set[int] = set()
    last_failure: dict[int, int] = {}
    for position, index, line in _indexed(parts):
        if line.get("status") == "success":
            succeeded.add(index)
        else:
            last_failure[index] = position
    return succeeded, last_failure


def _write_results(
    parts: Any, target: Any, succeeded: set[int], last_failure: dict[int, int]
) -> tuple[dict[str, int], int]:
    """Pass 2: one line per index (its first success, else its last failure)."""
    counts: Counter[str] = Counter()
    retryable = 0
    written: set[int] = set()
    with target.open("wb") as out:
        for position, index, line in _indexed(parts):
            ok = line.get("status") == "success"
            if index in written or not (
                ok or (index not in succeeded and last_failure.get(index) == position)
            ):
                continue
            out.write(dumps(line))
            written.add(index)
            counts[str(line.get("status"))] += 1
            retryable += 0 if ok else int(bool(line.get("retryable")))
    return dict(counts), retryable


def _write_failed_inputs(parts: Any, target: Any, succeeded: set[int]) -> None:
    seen: set[int] = set()
    with target.open("wb") as out:
        for record in read_parts(parts, "failed"):
            meta = record.get("meta")
            index = meta.get("index") if isinstance(meta, dict) else None
            if isinstance(index, int) and index not in succeeded and index not in seen:
                seen.add(index)
                out.write(dumps(record))
