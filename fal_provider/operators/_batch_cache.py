"""The result cache per batch item: a cached input costs nothing and makes no request.

Each item's key is :func:`fal_provider.cache.cache_key` of the batch's app id, the item's path and
arguments and ``cache_version``, the same key ``FalInferenceOperator(cache=True)`` uses, so a batch
reuses what single tasks paid for and the other way round. A hit is looked up before the item's
intent record and its budget reservation, so it is never journalled as a POST nor counted as spend;
a fetched result is stored (media copied) before its output line is written.

Not done here, unlike the single operator: the claim that makes two tasks racing on one new input
pay once (a batch window would wait up to a minute per contended item); two batches over the same
new inputs at the same time may both pay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fal_provider.cache import CacheEntry, ResultCache, cache_key


class BatchCache:
    """Lookups and stores of one batch, off the event loop (the cache may be object storage)."""

    def __init__(self, cache: ResultCache, hook: Any, *, app_id: str, cache_version: Any) -> None:
        self.cache = cache
        self.hook = hook
        self.app_id = app_id
        self.cache_version = cache_version
        self.hits = 0
        self.stored = 0

    def key(self, arguments: Any, path: str) -> str:
        return cache_key(self.app_id, arguments, path=path, cache_version=self.cache_version)

    async def lookup(self, arguments: Any, path: str) -> CacheEntry | None:
        entry = await asyncio.to_thread(self.cache.get, self.key(arguments, path))
        if entry is not None:
            self.hits += 1
        return entry

    async def store(self, arguments: Any, path: str, request_id: str, result: Any, cost: float | None) -> Any:
        """Store a fetched result; returns it with media URLs pointing at the cache's copies."""
        entry = await asyncio.to_thread(
            self.cache.put,
            self.key(arguments, path),
            result,
            app_id=self.app_id,
            path=path,
            request_id=request_id,
            cost=cost,
            currency="USD" if cost is not None else None,
            fetch=self.hook.fetch_media,
        )
        self.stored += 1
        return entry.result
