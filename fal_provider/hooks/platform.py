"""fal's Platform API (``https://api.fal.ai/v1``): what it tells about models and money, and the calls.

``FalHook`` fetches these (``get_pricing``, ``get_model_info``, ``estimate_cost``,
``get_billing_events``, ``get_request_history``, ``fetch_result``). The first half of this module
is the values, as plain frozen dataclasses (the public types operators and budgets share), how
long they are kept, and what a request cost (:class:`CostRecord`, built from a price and a
result's billed units); the second half builds the calls as :class:`Call` values and parses the
answers. The values live beside the calls that produce them so that one module, not two, runs when
a task checks a schema, looks up a price, reads a result's billed units or prices them.

Prices and model metadata change rarely and are asked for before every request, so they are kept
per process for a bounded time (:class:`TtlCache`, the connection's ``platform_cache_ttl``, one
hour by default): a price change reaches a long-running process within that time, and a worker
pays one lookup per model, not one per request.

Schema checks (:func:`check_arguments`) use the model's OpenAPI input schema, so a missing
required field or a wrong type fails before anything is submitted: fal may charge for a 422 that
used GPU time.

Like ``_calls``, the calls do no I/O: ``FalHook``'s sync and async twins build the same call and
send it with their own client, through the same retry rules and key check. Platform calls are
idempotent GETs (the estimate is a POST that starts nothing), so they use the idempotent policy.
Billing events are ADMIN-scoped: their calls say ``admin=True`` and the transport sends the
connection's admin key, only to the Platform API origin.

Where fal's reference is silent (how a deprecated model names its replacement, which list
endpoints page), the parsers read the documented field first and a few plausible spellings after,
and ignore what they do not know.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import httpx

from fal_provider.exceptions import FalInputError, FalNotFoundError, FalServerError
from fal_provider.hooks._calls import CallBuilder, FalSettings, join_url, json_body
from fal_provider.hooks._transport import IDEMPOTENT, NO_RETRY, Call, default_timeout
from fal_provider.models import AppId, check_request_id

__all__ = [
    "BillingEvent",
    "CostEstimate",
    "CostRecord",
    "CostTotal",
    "FetchedResult",
    "HistoryEntry",
    "ModelInfo",
    "Price",
    "TtlCache",
    "check_arguments",
    "clear_caches",
    "cost_record",
    "endpoint_of",
    "money",
    "reconciled",
    "total_of",
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


# -- what a request cost ------------------------------------------------------------------------
# fal bills the units an app reports on its result fetch (``x-fal-billable-units``) times the
# endpoint's unit price, so a finished request's cost is a value built from two of the values above:
#
# * ``exact=True`` when the figure is fal's own billing event (what was charged, after discounts);
# * ``exact=False`` (an estimate) when it is units x list price: fal may apply account discounts;
# * ``cost=None`` (unknown) with a ``reason`` when no units were sent or no price could be read.
#   A failing price lookup never fails an inference; only the cost is then unknown.
#
# What a task does with the record (log line, XCom, metrics, budgets) is in
# :mod:`fal_provider.operators.lifecycle`; a DAG run's total is
# :class:`~fal_provider.operators.costing.FalCostReportOperator`.


def endpoint_of(app_id: str, path: str = "") -> str:
    """The endpoint id prices are keyed by: the app id plus its sub-path."""
    return f"{app_id.strip('/')}/{path.strip('/')}" if path and path.strip("/") else app_id.strip("/")


@dataclass(frozen=True)
class CostRecord:
    """The cost of one fal request; JSON-safe through :meth:`to_xcom`."""

    app_id: str
    request_id: str
    units: float | None
    unit: str | None
    unit_price: float | None
    currency: str | None
    cost: float | None
    exact: bool = False
    reason: str | None = None

    def describe(self) -> str:
        """One log line: ``fal-ai/flux/schnell 1 megapixels x 0.003 USD = 0.003 USD (estimate)``."""
        if self.cost is None:
            return (
                f"{self.app_id} request {self.request_id}: cost unknown ({self.reason or 'no reason given'})"
            )
        quantity = f"{_num(self.units)} {self.unit}" if self.units is not None else "billed"
        how = "billed" if self.exact else "estimate: units x list price"
        return (
            f"{self.app_id} {quantity} × {_num(self.unit_price)} {self.currency} = "  # noqa: RUF001
            f"{_num(self.cost)} {self.currency} ({how}; request {self.request_id})"
        )

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any]) -> CostRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in names})


#: Decimal places a cost is kept to: far below any price fal quotes, and enough to drop the binary
#: noise of float products and sums (``0.1 + 0.2``) that would otherwise show in XCom and reports.
MONEY_PLACES = 12


def money(value: float) -> float:
    """``value`` rounded to :data:`MONEY_PLACES`, as every cost figure of the provider is."""
    return round(value, MONEY_PLACES)


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.10g}"


def cost_record(
    app_id: str,
    request_id: str,
    units: float | None,
    price: Any,
    *,
    reason: str | None = None,
) -> CostRecord:
    """The record of a finished request from its billed ``units`` and a ``Price`` (or ``None``).

    ``price`` is a :class:`fal_provider.hooks.platform.Price` (``unit_price``, ``unit``, ``currency``).
    Without units or a price the cost is unknown and ``reason`` (or a default) says why.
    """
    unit = getattr(price, "unit", None)
    unit_price = getattr(price, "unit_price", None)
    currency = getattr(price, "currency", None)
    if units is None or price is None or unit_price is None:
        why = reason or ("fal sent no billable units" if units is None else "no unit price for this app")
        return CostRecord(app_id, request_id, units, unit, unit_price, currency, None, reason=why)
    return CostRecord(app_id, request_id, units, unit, unit_price, currency, money(units * float(unit_price)))


def reconciled(record: CostRecord, event: Any) -> CostRecord:
    """``record`` with fal's charged figure from a billing event (``output_units``, ``unit_price``,
    ``cost_total``, ``currency``): exact, after any account discount."""
    if getattr(event, "cost_total", None) is None:
        return record
    units = event.output_units if event.output_units is not None else record.units
    price = event.unit_price if event.unit_price is not None else record.unit_price
    return CostRecord(
        record.app_id,
        record.request_id,
        units,
        record.unit,
        price,
        event.currency,
        money(float(event.cost_total)),
        exact=True,
    )


@dataclass(frozen=True)
class CostTotal:
    """What a set of requests cost: the known part, and how many requests had no figure."""

    total: float
    currency: str
    requests: int
    unknown: int
    exact: bool

    def describe(self) -> str:
        unknown = f", {self.unknown} of unknown cost" if self.unknown else ""
        how = "billed" if self.exact else "estimate"
        return f"{self.requests} fal requests cost {self.total:.10g} {self.currency} ({how}{unknown})"

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def total_of(records: Iterable[CostRecord | Mapping[str, Any]]) -> CostTotal:
    """Sum records, each request once (a request fetched by two tries counts once)."""
    seen: dict[str, CostRecord] = {}
    for item in records:
        record = item if isinstance(item, CostRecord) else CostRecord.from_xcom(item)
        seen[record.request_id] = record
    known = [r for r in seen.values() if r.cost is not None]
    currencies = {r.currency for r in known}
    if len(currencies) > 1:
        raise ValueError(f"Cannot add costs in several currencies: {sorted(map(str, currencies))}")
    return CostTotal(
        total=money(math.fsum(r.cost or 0.0 for r in known)),
        currency=next(iter(currencies), None) or "USD",
        requests=len(seen),
        unknown=len(seen) - len(known),
        exact=bool(known) and all(r.exact for r in known),
    )


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
        error = best_match(e for e in validator.iter_errors(dict(arguments)) if not _nullable_null(e))
    except (SchemaError, ValueError, KeyError, LookupError):
        return  # a schema fal serves that jsonschema cannot use is not the user's mistake
    if error is None:
        return
    raise FalInputError(
        f"Arguments for fal app {info.endpoint_id!r} do not match its input schema: "
        f"{_field_of(error)}: {_short(error.message)}. Fix the argument (see the model's API page), "
        "or pass validate_arguments=False if the schema is wrong; nothing was submitted."
    )


def _nullable_null(error: Any) -> bool:
    """OpenAPI 3.0 writes "or null" as ``nullable: true``, which JSON Schema does not know."""
    return (
        error.instance is None and isinstance(error.schema, Mapping) and error.schema.get("nullable") is True
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


# -- the calls -----------------------------------------------------------------------------------
def cache_key(settings: FalSettings, endpoint_id: str) -> tuple[str, str, str]:
    """Prices and metadata depend on the Platform API and the account (custom prices)."""
    return (settings.platform_url or "", settings.conn_id, endpoint_id)


def cached_prices(settings: FalSettings, ids: Sequence[str]) -> tuple[dict[str, Price], list[str]]:
    """The cached prices of ``ids`` and the ids still to fetch."""
    found: dict[str, Price] = {}
    for endpoint_id in ids:
        price = PRICES.get(cache_key(settings, endpoint_id))
        if price is not None:
            found[endpoint_id] = price
    return found, [i for i in ids if i not in found]


def remember_prices(settings: FalSettings, prices: Mapping[str, Price]) -> dict[str, Price]:
    for endpoint_id, price in prices.items():
        PRICES.put(cache_key(settings, endpoint_id), price, settings.platform_cache_ttl)
    return dict(prices)


def remember_model(settings: FalSettings, endpoint_id: str, found: Mapping[str, ModelInfo]) -> ModelInfo:
    info = found.get(endpoint_id)
    if info is None:
        raise FalNotFoundError(f"fal's Platform API has no model {endpoint_id!r}", http_status=404)
    return MODELS.put(cache_key(settings, endpoint_id), info, settings.platform_cache_ttl)


def recent_failure(settings: FalSettings, what: str) -> bool:
    return _failures.get(cache_key(settings, what)) is not None


def note_failure(settings: FalSettings, what: str, err: Exception, log: Any, consequence: str) -> None:
    """Remember a failed best-effort lookup; log why once per reason (not once per request)."""
    reason = f"{type(err).__name__}: {err}"
    key = cache_key(settings, what)
    if _failures.get(key) != reason:
        log.warning("fal Platform API: %s failed (%s); %s", what, reason, consequence)
    _failures.put(key, reason, FAILURE_TTL)


#: Header a result fetch (and a sync run) carries with the quantity fal bills for it.
BILLABLE_UNITS_HEADER = "x-fal-billable-units"
#: Names a model's metadata may use for its replacement (fal documents none; UNCONFIRMED).
REPLACEMENT_FIELDS = ("replacement_endpoint_id", "replaced_by", "replacement", "deprecated_replacement")
ESTIMATE_TYPES = {"historical_api_price": "call_quantity", "unit_price": "unit_quantity"}
HISTORY_STATUSES = ("success", "error", "user_error")
#: A list call stops after this many pages (a cursor that never ends must not loop forever).
MAX_PAGES = 1000
_Time = datetime | str | None
#: Best-effort lookups (a price for the cost line, a schema before a submit) give up quickly.
QUICK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: A failed best-effort lookup is not repeated for this long (a Platform API outage must not add a
#: timeout to every request), and its reason is logged once.
FAILURE_TTL = 300.0
_failures: TtlCache[tuple[str, str, str], str] = TtlCache()


@dataclass(frozen=True)
class Page:
    """One page of a listing and the call for the next one (``None``: the last page)."""

    items: list[Any]
    next_call: Call | None


def batches(ids: Sequence[str], size: int = MAX_IDS_PER_CALL) -> list[list[str]]:
    """``ids`` without duplicates (first occurrence wins), in calls of at most ``size``."""
    unique = list(dict.fromkeys(ids))
    return [unique[start : start + size] for start in range(0, len(unique), size)]


def billable_units(response: httpx.Response) -> float | None:
    """The ``x-fal-billable-units`` header as a number; ``None`` when absent or not a number."""
    raw = response.headers.get(BILLABLE_UNITS_HEADER)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def endpoint_ids(value: str | Sequence[str], what: str = "endpoint_ids") -> list[str]:
    """Endpoint ids, each checked like an app id (they go into query strings)."""
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str):
            raise FalInputError(f"{what} must be endpoint id strings, got {type(item).__name__}")
        AppId.parse(item)
    return items


def _time(value: _Time, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if not isinstance(value, datetime):
        raise FalInputError(f"{name} must be a datetime or an ISO 8601 string, got {type(value).__name__}")
    moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class PlatformCalls:
    """The Platform API calls of one connection (its ``platform_url``, keys and headers)."""

    def __init__(self, builder: CallBuilder, *, quick: bool = False) -> None:
        """``quick``: one attempt with a short timeout, for lookups an inference must not wait on."""
        self.builder = builder
        self.settings = builder.settings
        self.quick = quick

    @property
    def base_url(self) -> str:
        url = self.settings.platform_url
        if not url:
            raise FalInputError(
                f"Connection {self.settings.conn_id!r} has no Platform API: its queue host is not fal's, "
                "so set the extra 'platform_url' (fal: https://api.fal.ai/v1; the emulator: "
                "{base}/platform/v1) to use prices, model metadata and billing."
            )
        return url

    def _call(
        self,
        path: str,
        query: Sequence[tuple[str, str]],
        label: str,
        decode: Callable[[httpx.Response], Any],
        *,
        admin: bool = False,
        body: bytes | None = None,
    ) -> Call:
        url = join_url(self.base_url, path)
        extra = {"Content-Type": "application/json"} if body is not None else None
        return Call(
            method="POST" if body is not None else "GET",
            url=f"{url}?{urlencode(list(query))}" if query else url,
            label=label,
            policy=NO_RETRY if self.quick else IDEMPOTENT,
            headers=self.builder.headers({"Accept": "application/json"}, extra),
            timeout=QUICK_TIMEOUT if self.quick else default_timeout(self.settings),
            content=body,
            decode=decode,
            admin=admin,
        )

    def models(self, ids: Sequence[str]) -> Call:
        """Decodes to ``{endpoint_id: ModelInfo}`` (with the OpenAPI document expanded)."""
        query = [("endpoint_id", i) for i in ids] + [("expand", "openapi-3.0")]
        label = f"fal model metadata of {', '.join(ids)[:200]}"
        return self._call("models", query, label, partial(parse_models, label=label))

    def pricing(self, ids: Sequence[str]) -> Call:
        """Decodes to ``{endpoint_id: Price}`` (endpoints fal has no price for are left out)."""
        label = f"fal prices of {', '.join(ids)[:200]}"
        query = [("endpoint_id", i) for i in ids]
        return self._call("models/pricing", query, label, partial(parse_prices, label=label))

    def estimate(self, quantities: Mapping[str, float], estimate_type: str) -> Call:
        field_name = ESTIMATE_TYPES.get(estimate_type)
        if field_name is None:
            raise FalInputError(
                f"estimate_type must be one of {sorted(ESTIMATE_TYPES)}, got {estimate_type!r}"
            )
        if not isinstance(quantities, Mapping) or not quantities:
            raise FalInputError("estimate_cost needs a mapping of endpoint ids to quantities")
        endpoint_ids(list(quantities), "estimate_cost endpoints")
        for name, amount in quantities.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
                raise FalInputError(f"estimate_cost: the quantity for {name!r} must be a number >= 0")

        body = {
            "estimate_type": estimate_type,
            "endpoints": {k: {field_name: v} for k, v in quantities.items()},
        }
        label = "fal cost estimate"
        return self._call(
            "models/pricing/estimate",
            [],
            label,
            partial(parse_estimate, label=label),
            body=json.dumps(body).encode(),
        )

    def billing_events(
        self,
        request_ids: Sequence[str],
        *,
        endpoint_id: str | None,
        start: _Time,
        end: _Time,
        cursor: str | None = None,
    ) -> Call:
        """Decodes to a :class:`Page` of :class:`BillingEvent` (admin key)."""
        for request_id in request_ids:
            check_request_id(request_id)
        query = [("request_id", r) for r in request_ids]
        if endpoint_id:
            query.append(("endpoint_id", endpoint_ids(endpoint_id)[0]))
        query += _window(start, end) + ([("cursor", cursor)] if cursor else [])
        label = "fal billing events"
        again = partial(self.billing_events, request_ids, endpoint_id=endpoint_id, start=start, end=end)
        decode = partial(parse_page, label=label, key="billing_events", item=parse_billing_event, again=again)
        return self._call("models/billing-events", query, label, decode, admin=True)

    def history(self, endpoint_id: str, query: HistoryQuery, cursor: str | None = None) -> Call:
        """Decodes to a :class:`Page` of :class:`HistoryEntry`."""
        pairs = [("endpoint_id", endpoint_ids(endpoint_id, "endpoint_id")[0]), *query.pairs()]
        if cursor:
            pairs.append(("cursor", cursor))
        label = f"fal request history of {endpoint_id}"
        again = partial(self.history, endpoint_id, query)
        decode = partial(parse_page, label=label, key="items", item=parse_history_entry, again=again)
        return self._call("models/requests/by-endpoint", pairs, label, decode)


@dataclass(frozen=True)
class HistoryQuery:
    """The filters of a request-history listing, checked before any call."""

    start: _Time = None
    end: _Time = None
    with_payloads: bool = True
    status: str | None = None
    request_id: str | None = None
    limit: int | None = None

    def pairs(self) -> list[tuple[str, str]]:
        pairs = _window(self.start, self.end)
        if self.status is not None:
            if self.status not in HISTORY_STATUSES:
                raise FalInputError(f"status must be one of {HISTORY_STATUSES}, got {self.status!r}")
            pairs.append(("status", self.status))
        if self.request_id is not None:
            pairs.append(("request_id", check_request_id(self.request_id)))
        if self.limit is not None:
            limit = self.limit
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
                raise FalInputError(f"limit must be an integer from 1 to 100, got {limit!r}")
            pairs.append(("limit", str(limit)))
        if self.with_payloads:
            pairs.append(("expand", "payloads"))
        return pairs


def _window(start: _Time, end: _Time) -> list[tuple[str, str]]:
    pairs = [("start", _time(start, "start")), ("end", _time(end, "end"))]
    return [(name, value) for name, value in pairs if value]


# -- answers ---------------------------------------------------------------------------------------
def _body(response: httpx.Response, label: str, key: str) -> list[Any]:
    body = json_body(response, label)
    items = body.get(key) if isinstance(body, Mapping) else None
    if not isinstance(items, list):
        raise FalServerError(f"{label}: fal's answer has no list {key!r}: {str(body)[:200]!r}")
    return items


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def parse_prices(response: httpx.Response, label: str) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for item in _body(response, label, "prices"):
        if not isinstance(item, Mapping) or _number(item.get("unit_price")) is None:
            continue
        endpoint_id = str(item.get("endpoint_id") or "")
        prices[endpoint_id] = Price(
            endpoint_id=endpoint_id,
            unit_price=float(item["unit_price"]),
            unit=str(item.get("unit") or "unit"),
            currency=str(item.get("currency") or "USD").upper(),
        )
    return prices


def parse_models(response: httpx.Response, label: str) -> dict[str, ModelInfo]:
    models = (parse_model(item) for item in _body(response, label, "models") if isinstance(item, Mapping))
    return {info.endpoint_id: info for info in models}


def parse_model(item: Mapping[str, Any]) -> ModelInfo:
    endpoint_id = str(item.get("endpoint_id") or "")
    meta = item.get("metadata") if isinstance(item.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    status = _text(meta.get("status") or item.get("status"))
    replacement = next((str(meta[name]) for name in REPLACEMENT_FIELDS if _text(meta.get(name))), None)
    return ModelInfo(
        endpoint_id=endpoint_id,
        input_schema=input_schema(item.get("openapi"), endpoint_id),
        duration_estimate=_number(meta.get("duration_estimate", item.get("duration_estimate"))),
        deprecated=status == "deprecated" or meta.get("deprecated") is True,
        replacement=replacement,
        display_name=_text(meta.get("display_name")),
        status=status,
        metadata=dict(meta),
    )


def input_schema(document: Any, endpoint_id: str) -> dict[str, Any] | None:
    """The request body schema of the endpoint's POST in its OpenAPI document, refs resolvable."""
    paths = document.get("paths") if isinstance(document, Mapping) else None
    if not isinstance(paths, Mapping):
        return None
    candidates = [f"/{endpoint_id}", *(p for p in paths if "/requests/" not in str(p))]
    for path in candidates:
        schema = _post_schema(paths.get(path))
        if schema is not None:
            components = document.get("components")
            return {**schema, "components": dict(components) if isinstance(components, Mapping) else {}}
    return None


def _post_schema(operations: Any) -> dict[str, Any] | None:
    try:
        schema = operations["post"]["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return None
    return dict(schema) if isinstance(schema, Mapping) else None


def parse_estimate(response: httpx.Response, label: str) -> CostEstimate:
    body = json_body(response, label)
    total = _number(body.get("total_cost")) if isinstance(body, Mapping) else None
    if total is None:
        raise FalServerError(f"{label}: fal's answer has no total_cost: {str(body)[:200]!r}")
    return CostEstimate(
        estimate_type=str(body.get("estimate_type") or ""),
        total_cost=total,
        currency=str(body.get("currency") or "USD").upper(),
    )


def parse_page(
    response: httpx.Response,
    label: str,
    key: str,
    item: Callable[[Mapping[str, Any]], Any],
    again: Callable[..., Call],
) -> Page:
    items = [item(entry) for entry in _body(response, label, key) if isinstance(entry, Mapping)]
    body = response.json()
    cursor = body.get("next_cursor") if isinstance(body, Mapping) else None
    more = bool(body.get("has_more")) and isinstance(cursor, str) and bool(cursor)
    return Page(items, again(cursor=cursor) if more else None)


def parse_billing_event(item: Mapping[str, Any]) -> BillingEvent:
    tags = item.get("tags")
    nano = _number(item.get("cost_estimate_nano_usd"))
    return BillingEvent(
        request_id=str(item.get("request_id") or ""),
        endpoint_id=str(item.get("endpoint_id") or ""),
        timestamp=_text(item.get("timestamp")),
        output_units=_number(item.get("output_units")),
        unit_price=_number(item.get("unit_price")),
        cost_total=_number(item.get("cost_total")),
        currency=str(item.get("currency") or "USD").upper(),
        tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, Mapping) else {},
        cost_estimate_nano_usd=int(nano) if nano is not None else None,
    )


def history_status(status_code: int | None) -> str:
    if status_code is None:
        return "in_progress"
    if 200 <= status_code < 300:
        return "success"
    return "user_error" if status_code < 500 else "error"


def parse_history_entry(item: Mapping[str, Any]) -> HistoryEntry:
    code = item.get("status_code")
    status_code = code if isinstance(code, int) and not isinstance(code, bool) else None
    payload = item.get("json_input")
    return HistoryEntry(
        request_id=str(item.get("request_id") or ""),
        endpoint_id=str(item.get("endpoint_id") or ""),
        status=history_status(status_code),
        started_at=_text(item.get("started_at")),
        sent_at=_text(item.get("sent_at")),
        ended_at=_text(item.get("ended_at")),
        status_code=status_code,
        duration=_number(item.get("duration")),
        input=dict(payload) if isinstance(payload, Mapping) else None,
        output=item.get("json_output"),
    )
