"""What fal's Platform API tells about models and money, as plain values, and how long they are kept.

``FalHook`` fetches these (``get_pricing``, ``get_model_info``, ``estimate_cost``,
``get_billing_events``, ``get_request_history``, ``fetch_result``); this module is their one public
home, so operators, cost records and budgets share the same types without importing the hook's
private wire code. Prices and model metadata change rarely and are asked for before every request,
so they are kept per process for a bounded time (:class:`TtlCache`, the connection's
``platform_cache_ttl``, one hour by default): a price change reaches a long-running process within
that time, and a worker pays one lookup per model, not one per request.

Schema checks (:func:`check_arguments`) use the model's OpenAPI input schema, so a missing
required field or a wrong type fails before anything is submitted: fal may charge for a 422 that
used GPU time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fal_provider.exceptions import FalInputError

__all__ = [
    "BillingEvent",
    "CostEstimate",
    "FetchedResult",
    "HistoryEntry",
    "ModelInfo",
    "Price",
    "TtlCache",
    "check_arguments",
    "clear_caches",
]

#: The most endpoint ids (or request ids) fal takes in one Platform API call.
MAX_IDS_PER_CALL = 50


@dataclass(frozen=True)
class Price:
    """fal's list price of one unit of an endpoint's output ("custom pricing or discounts may be
    applied based on account status": billing events carry what was actually charged)."""

    endpoint_id: str
    unit_price: float
    unit: str
    currency: str = "USD"

    def cost(self, units: float) -> float:
        """``units * unit_price``: the list-price estimate of a request that billed ``units``."""
        return units * self.unit_price


@dataclass(frozen=True)
class ModelInfo:
    """A model's catalogue entry: its input schema, expected duration and deprecation status.

    ``input_schema`` is a JSON schema for the request body (with the OpenAPI document's
    ``components`` alongside, so its ``$ref``\\ s resolve), or ``None`` when fal serves none.
    ``duration_estimate`` is in fal's unit for that field (minutes).
    """

    endpoint_id: str
    input_schema: dict[str, Any] | None = None
    duration_estimate: float | None = None
    deprecated: bool = False
    replacement: str | None = None
    display_name: str | None = None
    status: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CostEstimate:
    """``POST /models/pricing/estimate``: what the given calls or units would cost."""

    estimate_type: str
    total_cost: float
    currency: str = "USD"


@dataclass(frozen=True)
class BillingEvent:
    """One charge fal recorded for a request (admin-scoped). ``cost_total`` is after discounts."""

    request_id: str
    endpoint_id: str
    timestamp: str | None
    output_units: float | None
    unit_price: float | None
    cost_total: float | None
    currency: str = "USD"
    tags: Mapping[str, str] = field(default_factory=dict)
    cost_estimate_nano_usd: int | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """A request in fal's history for an endpoint; ``input``/``output`` only with payloads stored.

    ``status``: ``success`` (2xx), ``user_error`` (4xx), ``error`` (5xx), or ``in_progress`` when
    fal reports no status code yet.
    """

    request_id: str
    endpoint_id: str
    status: str
    started_at: str | None = None
    sent_at: str | None = None
    ended_at: str | None = None
    status_code: int | None = None
    duration: float | None = None
    input: dict[str, Any] | None = None
    output: Any = None


@dataclass(frozen=True)
class FetchedResult:
    """A result and what fal billed for it (``x-fal-billable-units``; ``None`` when not sent)."""

    data: Any
    billable_units: float | None = None
    request_id: str | None = None


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A thread-safe mapping whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: K, value: V, ttl: float) -> V:
        with self._lock:
            self._entries[key] = (self._clock() + ttl, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: Per process, keyed by (Platform API URL, connection id, endpoint id).
PRICES: TtlCache[tuple[str, str, str], Price] = TtlCache()
MODELS: TtlCache[tuple[str, str, str], ModelInfo] = TtlCache()


def clear_caches() -> None:
    """Forget cached prices and model metadata (after changing prices, in a long-lived process)."""
    PRICES.clear()
    MODELS.clear()


def check_arguments(info: ModelInfo, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`FalInputError` naming the field when ``arguments`` do not fit the input schema.

    Nothing happens without a schema. Only the first (best-matching) problem is reported, with the
    path of the field and what the schema expects.
    """
    if info.input_schema is None:
        return
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError, best_match

    try:
        validator = Draft202012Validator(info.input_schema)
        error = best_match(validator.iter_errors(dict(arguments)))
    except (SchemaError, ValueError, KeyError, LookupError):
        return  # a schema fal serves that jsonschema cannot use is not the user's mistake
    if error is None:
        return
    raise FalInputError(
        f"Arguments for fal app {info.endpoint_id!r} do not match its input schema: "
        f"{_field_of(error)}: {_short(error.message)}. Fix the argument (see the model's API page), "
        "or pass validate_arguments=False if the schema is wrong; nothing was submitted."
    )


def _field_of(error: Any) -> str:
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in (error.instance or {})]
        path.append(missing[0] if missing else "?")
        return "missing required field " + ".".join(path)
    return "field " + (".".join(path) or "(body)")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."
