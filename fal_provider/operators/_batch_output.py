"""The end of a batch: one ``results.jsonl`` line per input, the failed inputs, the counts.

Every try appends to its own parts as items finish; this assembles them by streaming (two passes,
holding one int per succeeded item and one per failed item), so the output has exactly one line
per input index: its success if any try got one, else its latest failure.
"""

from __future__ import annotations

from collections import Counter
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
    succeeded: set[int] = set()
    last_failure: dict[int, int] = {}
    for position, line in enumerate(read_parts(parts, "results")):
        index = line.get("index")
        if not isinstance(index, int):
            continue
        if line.get("status") == "success":
            succeeded.add(index)
        else:
            last_failure[index] = position
    counts: Counter[str] = Counter()
    retryable = 0
    written: set[int] = set()
    results = folder / "results.jsonl"
    with results.open("wb") as out:
        for position, line in enumerate(read_parts(parts, "results")):
            index = line.get("index")
            if not isinstance(index, int) or index in written:
                continue
            ok = line.get("status") == "success"
            if ok or (index not in succeeded and last_failure.get(index) == position):
                out.write(dumps(line))
                written.add(index)
                counts[str(line.get("status"))] += 1
                retryable += 0 if ok else int(bool(line.get("retryable")))
    failed_inputs = folder / "failed_inputs.jsonl"
    seen: set[int] = set()
    with failed_inputs.open("wb") as out:
        for record in read_parts(parts, "failed"):
            meta = record.get("meta")
            index = meta.get("index") if isinstance(meta, dict) else None
            if isinstance(index, int) and index not in succeeded and index not in seen:
                seen.add(index)
                out.write(dumps(record))
    return Assembled(dict(counts), retryable, str(results), str(failed_inputs))
