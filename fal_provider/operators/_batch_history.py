"""fal's request history as a batch's safety net (``FalHook.aget_request_history``, when the
connection reaches fal's Platform API).

* An *orphan* is an item whose intent was journalled but whose request id was not: the worker died
  between the POST and the next journal write. fal has no idempotency key, so the only way to know
  whether that POST was accepted is to look for a request of this endpoint, sent after the intent,
  with exactly this input. Each history entry is adopted by at most one orphan; what is not found
  follows ``on_orphan``.
* A result past fal's retention (1 h, 6 min for >= 10 KB) is still in the history's stored output
  when payload storage is on; otherwise the item is ``expired``.

Without the Platform API both fall back quietly (logged once): the batch behaves as without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

#: Clock skew allowed between the worker's intent timestamp and fal's ``sent_at``.
SKEW = timedelta(minutes=2)
_MISSING = object()


def arguments_hash(arguments: Any) -> str:
    body = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


async def find_orphans(
    hook: Any, app_id: str, orphans: dict[int, tuple[str, float]], known: set[str], log: logging.Logger | Any
) -> dict[int, str]:
    """``{index: request_id}`` for the orphans (``index -> (arguments hash, intent time)``) whose
    POST fal did accept; ``known``: request ids the journal already has (never adopted twice)."""
    history = getattr(hook, "aget_request_history", None)
    if not orphans or history is None:
        return {}
    start = datetime.fromtimestamp(min(t for _, t in orphans.values()), tz=timezone.utc) - SKEW
    try:
        entries = await history(app_id, start=start, with_payloads=True)
    except Exception as err:
        log.warning("fal request history unavailable (%s); orphaned items follow on_orphan", err)
        return {}
    by_input: dict[str, list[str]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: e.sent_at or ""):
        if entry.request_id not in known and entry.input is not None:
            by_input[arguments_hash(entry.input)].append(entry.request_id)
    adopted: dict[int, str] = {}
    for index, (digest, _) in sorted(orphans.items()):
        if by_input.get(digest):
            adopted[index] = by_input[digest].pop(0)
    return adopted


async def recover_output(hook: Any, app_id: str, request_id: str, log: logging.Logger | Any) -> Any:
    """The stored output of a request whose queue result expired, or ``_MISSING``."""
    history = getattr(hook, "aget_request_history", None)
    if history is None:
        return _MISSING
    try:
        entries = await history(app_id, request_id=request_id, with_payloads=True)
    except Exception as err:
        log.warning("fal request history unavailable (%s); request %s counts as expired", err, request_id)
        return _MISSING
    for entry in entries:
        if entry.request_id == request_id and entry.status == "success" and entry.output is not None:
            return entry.output
    return _MISSING


def recovered(value: Any) -> bool:
    return value is not _MISSING
