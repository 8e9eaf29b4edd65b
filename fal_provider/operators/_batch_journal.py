"""The batch journal: what happened to every item, so a later try never pays twice.

Records (one JSON object per line, ``i`` = input index):

* ``intent``    written *before* the POST (with the attempt, the item's fingerprint and, when the
  task has a spending limit, ``est``: the estimate reserved for that POST);
* ``submitted`` written right after it, with fal's request id;
* ``released``  the request was cancelled by a user's kill: a later try submits the item again;
* ``done``      a terminal outcome; its output line is already in a results part.

Loading keeps only what a resume needs: the indexes that are finished (a ``set[int]``) and the
latest open record of the items that are not (at most ``max_in_flight`` of them per earlier try),
so memory does not grow with the batch beyond one int per finished item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fal_provider.operators._batch_store import Part, read_parts

#: Outcomes after which an item is never sent again by this batch.
TERMINAL = frozenset({"success", "failed", "expired", "orphaned"})


@dataclass
class OpenItem:
    """An item an earlier try started and did not finish."""

    attempt: int
    fingerprint: str | None
    request_id: str | None = None
    arguments_hash: str | None = None
    intent_at: float = 0.0


@dataclass
class JournalState:
    finished: set[int] = field(default_factory=set)
    open: dict[int, OpenItem] = field(default_factory=dict)
    #: Items whose last outcome was a retryable failure: a new try gives them fresh attempts.
    retryable: set[int] = field(default_factory=set)
    #: The estimates of every POST announced so far (``est`` of the intents): the batch's spend.
    spent: float = 0.0

    def apply(self, record: dict[str, Any]) -> None:
        index, event = record.get("i"), record.get("e")
        if not isinstance(index, int):
            return
        if event == "intent":
            self.spent += float(record.get("est") or 0.0)
            self.open[index] = OpenItem(
                int(record.get("a", 1)), record.get("fp"), None, record.get("ah"), float(record.get("t", 0))
            )
        elif event == "submitted" and index in self.open:
            self.open[index].request_id = record.get("rid")
        elif event == "released":
            self.open.pop(index, None)
        elif event == "done":
            self.open.pop(index, None)
            if record.get("outcome") in TERMINAL and not record.get("retryable"):
                self.finished.add(index)
                self.retryable.discard(index)
            else:
                self.retryable.add(index)


def load_state(folder: Any) -> JournalState:
    """Replay the journal, then trust the results parts too: a result written just before a kill
    (whose ``done`` record was lost) is finished as well, and is not fetched or paid again."""
    state = JournalState()
    for record in read_parts(folder / "journal", "journal"):
        state.apply(record)
    for line in read_parts(folder / "parts", "results"):
        index = line.get("index")
        if isinstance(index, int) and line.get("status") == "success":
            state.finished.add(index)
            state.open.pop(index, None)
    return state


class Journal:
    """This try's journal part, with one method per record kind."""

    def __init__(self, folder: Any, try_number: int) -> None:
        self.part = Part(folder / "journal", "journal", try_number)

    def intent(
        self, index: int, attempt: int, fingerprint: str, arguments_hash: str, estimate: float | None = None
    ) -> None:
        record: dict[str, Any] = {
            "i": index,
            "e": "intent",
            "a": attempt,
            "fp": fingerprint,
            "ah": arguments_hash,
        }
        if estimate is not None:
            record["est"] = estimate
        record["t"] = round(time.time(), 3)
        self.part.write(record)
        self.part.sync()  # durable before the POST it announces

    def adopted(self, index: int, attempt: int, request_id: str) -> None:
        """An orphan's request, found in fal's request history: reattached, never paid again."""
        self.part.write({"i": index, "e": "submitted", "a": attempt, "rid": request_id, "adopted": True})
        self.part.sync()

    def submitted(self, index: int, attempt: int, request_id: str) -> None:
        self.part.write({"i": index, "e": "submitted", "a": attempt, "rid": request_id})
        self.part.sync()

    def released(self, index: int) -> None:
        self.part.write({"i": index, "e": "released"})

    def done(self, index: int, outcome: str, *, retryable: bool = False) -> None:
        record: dict[str, Any] = {"i": index, "e": "done", "outcome": outcome}
        if retryable:
            record["retryable"] = True
        self.part.write(record)

    def close(self) -> None:
        self.part.close()
