"""What the emulator bills: one billing event per successful request, and the request history.

Each successful queue request or sync run of a priced app (:mod:`.pricing`) is billed once, when
it completes: its ``x-fal-billable-units`` header is set on the stored answer (so every result
fetch carries it), and a billing event records units, list price, cost and the request's tags
(``X-Fal-Tags``). The history lists queue requests (also those still running: ``ended_at`` and
``status_code`` are then ``null``) and sync runs, with their JSON input and output unless the
request said ``X-Fal-Store-IO: 0``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fal_provider.emulator.apps import AppResponse
from fal_provider.emulator.pricing import PRICE_TABLE, format_units

#: fal's tag rules (request-tags docs): the gateway drops a tag that breaks one, never the request.
MAX_TAGS = 10
_TAG_KEY = re.compile(r"^[a-z0-9._-]{1,64}$")
_TAG_VALUE = re.compile(r"^[\x20-\x7e]{0,256}$")
NANO = 1_000_000_000


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_tags(header: str | None) -> dict[str, str]:
    """``key=value,key=value`` (or a JSON object), keeping only tags that follow fal's rules."""
    if not header or len(header.encode()) > 1024:
        return {}
    pairs: Iterable[tuple[Any, Any]]
    try:
        loaded = json.loads(header) if header.lstrip().startswith("{") else None
    except ValueError:
        loaded = None
    if isinstance(loaded, Mapping):
        pairs = loaded.items()
    else:
        pairs = (part.partition("=")[::2] for part in header.split(","))
    tags: dict[str, str] = {}
    for key, value in pairs:
        name, text = str(key).strip().lower(), str(value).strip()
        if _TAG_KEY.match(name) and not name.startswith("fal.") and _TAG_VALUE.match(text):
            tags.setdefault(name, text)
    return dict(list(tags.items())[:MAX_TAGS])


def header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


@dataclass
class BillingEvent:
    request_id: str
    endpoint_id: str
    timestamp: float
    output_units: float
    unit: str
    unit_price: float
    currency: str
    tags: dict[str, str]

    @property
    def cost_total(self) -> float:
        return round(self.output_units * self.unit_price, 12)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "endpoint_id": self.endpoint_id,
            "timestamp": iso(self.timestamp),
            "output_units": self.output_units,
            "unit": self.unit,
            "unit_price": self.unit_price,
            "percent_discount": 0,
            "cost_subtotal": self.cost_total,
            "cost_discount": 0.0,
            "cost_total": self.cost_total,
            "cost_estimate_nano_usd": round(self.cost_total * NANO),
            "currency": self.currency,
            "tags": dict(self.tags),
        }


@dataclass
class RunRecord:
    """A sync ``/run`` call, kept for the request history (queue requests keep their own)."""

    request_id: str
    endpoint_id: str
    arguments: Any
    headers: dict[str, str]
    submitted_at: float
    started_at: float | None
    completed_at: float | None
    response: AppResponse | None


@dataclass
class Ledger:
    events: dict[str, BillingEvent] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    #: Endpoint id → replacement (or ``None``): models the catalogue reports as deprecated.
    deprecations: dict[str, str | None] = field(default_factory=dict)

    def bill(
        self,
        request_id: str,
        endpoint_id: str,
        arguments: Any,
        response: AppResponse,
        seconds: float,
        headers: Mapping[str, str],
    ) -> None:
        """Bill a finished request once (a successful answer of a priced app) and tag its answer."""
        entry = PRICE_TABLE.get(endpoint_id)
        if entry is None or not response.ok or request_id in self.events:
            return
        args = arguments if isinstance(arguments, Mapping) else {}
        units = entry.measure(args, response.body, seconds)
        response.headers["x-fal-billable-units"] = format_units(units)
        self.events[request_id] = BillingEvent(
            request_id=request_id,
            endpoint_id=endpoint_id,
            timestamp=time.time(),
            output_units=units,
            unit=entry.unit,
            unit_price=entry.unit_price,
            currency=entry.currency,
            tags=parse_tags(header(headers, "x-fal-tags")),
        )

    def total(self, tags: Mapping[str, str] | None = None) -> float:
        """Billed total, optionally of the events carrying all of ``tags``."""
        wanted = dict(tags or {})
        chosen = (e for e in self.events.values() if all(e.tags.get(k) == v for k, v in wanted.items()))
        return round(sum(e.cost_total for e in chosen), 12)

    def average_cost(self, endpoint_id: str) -> float | None:
        costs = [e.cost_total for e in self.events.values() if e.endpoint_id == endpoint_id]
        return sum(costs) / len(costs) if costs else None

    def clear(self) -> None:
        self.events.clear()
        self.runs.clear()
        self.deprecations.clear()


def history_item(record: Any, with_payloads: bool) -> dict[str, Any]:
    """One history entry from a queue request or a :class:`RunRecord` (same attribute names)."""
    response: AppResponse | None = record.response
    done = record.completed_at is not None and response is not None
    started = record.started_at
    item: dict[str, Any] = {
        "request_id": record.request_id,
        "endpoint_id": record.endpoint_id,
        "sent_at": iso(record.submitted_at),
        "started_at": iso(started),
        "ended_at": iso(record.completed_at) if done else None,
        "status_code": response.status_code if done and response else None,
        "duration": round(record.completed_at - started, 6) if done and started else None,
    }
    if with_payloads:
        stored = (header(record.headers, "x-fal-store-io") or "1").strip() not in ("0", "false")
        item["json_input"] = record.arguments if stored else None
        item["json_output"] = response.body if stored and done and response else None
    return item
