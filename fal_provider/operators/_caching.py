"""The inference operator's side of the result cache (:mod:`fal_provider.cache`).

One :class:`TaskCache` per ``execute`` / ``execute_complete``: it knows the task's key (from the
rendered inputs, so the deferred resume computes the same one), the task instance that owns its
claim, and how the hook downloads and uploads media.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fal_provider.cache import (
    CLAIM_WAIT,
    CacheEntry,
    ResultCache,
    cache_key,
    configured_root,
    format_cost,
    priced,
)
from fal_provider.exceptions import FalInputError
from fal_provider.models import FalRequestRef
from fal_provider.operators.lifecycle import COST_XCOM_KEY, StoredRequest, reattach_status

log = logging.getLogger(__name__)

CLAIM_POLL = 0.5


def open_cache(explicit: Any, hook: Any) -> ResultCache | None:
    """The cache the connection or config points at (``None`` when nowhere is configured)."""
    connection_path = getattr(hook.settings, "cache_path", None)
    root = configured_root(explicit, connection_path if isinstance(connection_path, str) else None)
    return None if root is None else ResultCache(root)


def owner_of(context: Any) -> str:
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"


@dataclass
class Waiting:
    """Another task is paying for this key: wait for its request, or take its stored result."""

    ref: FalRequestRef | None = None
    entry: CacheEntry | None = None


class TaskCache:
    """The cache as one task instance uses it."""

    def __init__(self, cache: ResultCache, key: str, owner: str, app_id: str, path: str) -> None:
        self.cache = cache
        self.key = key
        self.owner = owner
        self.app_id = app_id
        self.path = path

    @classmethod
    def open(
        cls,
        hook: Any,
        context: Any,
        *,
        app_id: str,
        path: str,
        arguments: Mapping[str, Any],
        cache_path: Any,
        cache_version: Any,
    ) -> TaskCache:
        """Resolve and probe the cache; any problem is a ``FalInputError`` before fal is called."""
        cache = open_cache(cache_path, hook)
        if cache is None:
            raise FalInputError(
                "cache=True needs a place to store results: set cache_path=... on the operator, the "
                "'cache_path' extra of the fal connection, or [fal] cache_path (AIRFLOW__FAL__CACHE_PATH), "
                "to a folder or an object-storage URI such as s3://aws_default@bucket/fal-cache"
            )
        cache.check_writable()
        key = cache_key(app_id, arguments, path=path, cache_version=cache_version)
        return cls(cache, key, owner_of(context), app_id, path)

    # -- before submitting ---------------------------------------------------------------------

    def lookup(self) -> CacheEntry | None:
        return self.cache.get(self.key)

    def log_hit(self, entry: CacheEntry, context: Any) -> None:
        log.info(
            "%s: cache hit, saved ~%s (result of fal request %s, cached %s under key %s in %s)",
            self.app_id,
            entry.saved,
            entry.request_id,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.created_at)),
            self.key[:16],
            self.cache.uri,
        )
        # The cost record's fields (fal_provider.hooks.platform.CostRecord): nothing was billed, exactly.
        record = {
            "app_id": self.app_id,
            "request_id": f"cache:{self.key[:32]}",
            "units": 0.0,
            "unit": None,
            "unit_price": None,
            "currency": entry.currency or "USD",
            "cost": 0.0,
            "exact": True,
            "reason": f"cache hit, saved ~{entry.saved}",
            "cache_hit": True,
            "saved": entry.cost,
            "cached_request_id": entry.request_id,
        }
        try:
            context["ti"].xcom_push(key=COST_XCOM_KEY, value=record)
        except Exception as err:  # the result matters more than its cost line
            log.warning("Could not push the cache hit's cost record: %s", err)

    def claim_or_wait(self, hook: Any) -> Waiting | None:
        """``None`` when this task may pay for the key; else what to wait for instead.

        The claim's owner names its request right after submitting it; until then this task looks
        again every half second for up to :data:`~fal_provider.cache.CLAIM_WAIT` seconds (the
        result or the request id may appear). A claim whose request failed is taken over.
        """
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            other = self.cache.claim(self.key, self.owner)
            if other is None:
                return None
            entry = self.cache.get(self.key)
            if entry is not None:
                return Waiting(entry=entry)
            if other.request is not None:
                ref = FalRequestRef.coerce(other.request)
                if reattach_status(hook, StoredRequest(ref), None) is not None:
                    log.info(
                        "Task %s is already paying for this input (fal request %s); waiting for it",
                        other.owner,
                        ref.request_id,
                    )
                    return Waiting(ref=ref)
                self.cache.claim_path(self.key).unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                log.warning(
                    "Task %s claimed this input %.0f s ago and has not submitted it; paying for it here",
                    other.owner,
                    time.time() - other.created_at,
                )
                return None
            time.sleep(CLAIM_POLL)

    def record_request(self, ref: FalRequestRef) -> None:
        self.cache.record_request(self.key, self.owner, ref.to_xcom())

    # -- after the result ----------------------------------------------------------------------

    def store(self, hook: Any, context: Any, ref: FalRequestRef, result: Any, units: float | None) -> Any:
        """Store the result (media copied) and answer it with its URLs pointing at the copies."""
        cost, currency = known_cost(hook, context, self.app_id, units)
        entry = self.cache.put(
            self.key,
            result,
            app_id=self.app_id,
            path=self.path,
            request_id=ref.request_id,
            cost=cost,
            currency=currency,
            fetch=hook.fetch_media,
        )
        self.cache.release(self.key, self.owner)
        log.info(
            "Cached the result of fal request %s (cost %s) under key %s in %s",
            ref.request_id,
            format_cost(cost, currency),
            self.key[:16],
            self.cache.uri,
        )
        return entry.result

    def release(self) -> None:
        self.cache.release(self.key, self.owner)


def known_cost(hook: Any, context: Any, app_id: str, units: float | None) -> tuple[float | None, str | None]:
    """What the request cost, as far as it is known when its result is cached.

    The task's cost record (XCom ``fal_cost``) when one was pushed, else billable units times the
    endpoint's list price, else unknown. Never fails: a missing price must not lose a result.
    """
    try:
        record = context["ti"].xcom_pull(task_ids=context["ti"].task_id, key=COST_XCOM_KEY)
    except Exception:
        record = None
    if isinstance(record, Mapping) and isinstance(record.get("cost"), int | float):
        return float(record["cost"]), record.get("currency")
    return priced(hook, app_id, units)
