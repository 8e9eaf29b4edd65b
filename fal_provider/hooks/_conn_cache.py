"""Share one connection lookup between the hooks on an event loop, for a few seconds.

A triggerer builds one hook per trigger, and each hook used to resolve its Airflow connection on its
first call (``BaseHook.aget_connection``: secrets backends, then the API server, plus parsing the
extras). With ~1,000 triggers that is ~1,000 identical lookups at once, and an async task that
gathers many calls on one hook did the same lookup once per call, because they all started before
the first one finished. Profiling 1,000 triggers put these lookups second only to the HTTP pool.

So lookups are cached per event loop and connection id for :data:`TTL` seconds, and concurrent
lookups of the same id wait for the one already running. The TTL stays short so a rotated key or
an edited connection is picked up quickly. Entries hold the key in memory only; nothing here logs.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: Seconds a looked-up connection is reused by other hooks on the same loop.
TTL = 30.0


@dataclass(frozen=True)
class ConnFields:
    """The connection fields settings are resolved from; ``found=False``: the id is not defined."""

    found: bool
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)


Fetch = Callable[[str], Awaitable[ConnFields]]

_Entry = tuple[float, "asyncio.Task[ConnFields]"]
_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Entry]] = weakref.WeakKeyDictionary()


async def lookup(conn_id: str, fetch: Fetch, *, now: Callable[[], float] = time.monotonic) -> ConnFields:
    """``fetch(conn_id)`` at most once per loop per :data:`TTL`; failures are not cached."""
    cache = _caches.setdefault(asyncio.get_running_loop(), {})
    entry = cache.get(conn_id)
    if entry is None or entry[0] <= now() or (entry[1].done() and entry[1].exception() is not None):
        task = asyncio.ensure_future(fetch(conn_id))
        entry = (now() + TTL, task)
        cache[conn_id] = entry
        task.add_done_callback(lambda done: _forget_failure(cache, conn_id, done))
    # shield: a cancelled waiter (its trigger was killed) must not cancel the lookup others share.
    return await asyncio.shield(entry[1])


def _forget_failure(cache: dict[str, _Entry], conn_id: str, task: asyncio.Task[ConnFields]) -> None:
    entry = cache.get(conn_id)
    if entry is not None and entry[1] is task and (task.cancelled() or task.exception() is not None):
        del cache[conn_id]


def clear() -> None:
    """Forget every cached lookup (after editing a connection in the same process)."""
    _caches.clear()
