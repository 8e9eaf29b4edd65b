"""fal's Platform API (``api.fal.ai/v1``) under ``/platform/v1``: models, prices, estimates,
billing events (ADMIN key) and request history, with the Platform API's error envelope.

Scopes: API-scoped operations take the emulator's key or its admin key; billing events take only
the admin key (``403 authorization_error`` for the API key). Without a configured key any
well-formed key passes, as on the other hosts, and then counts as admin too. Faults fire here only
for rules that name the ``platform`` endpoint, so existing fault rules keep hitting the calls
they were written for.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fal_provider.emulator.auth import auth_error
from fal_provider.emulator.billing import history_item
from fal_provider.emulator.pricing import PRICE_TABLE
from fal_provider.emulator.schemas import openapi_document
from fal_provider.emulator.state import EmulatorState

PREFIX = "/platform/v1"
DOCS = "https://fal.ai/docs/platform-apis"
MAX_IDS = 50
DAY_S = 24 * 3600.0


class PlatformError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "type": self.kind,
                "message": self.message,
                "docs_url": DOCS,
                "request_id": str(uuid.uuid4()),
            }
        }
        return JSONResponse(body, status_code=self.status)


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_scope(state: EmulatorState, request: Request, *, admin: bool) -> None:
    """Raise the Platform API's 401/403 unless the key may call this operation."""
    problem = auth_error(request.headers.get("authorization"), None)
    if problem is not None:
        raise PlatformError(401, "authorization_error", problem)
    given = request.headers["authorization"].strip().partition(" ")[2].strip()
    key, admin_key = state.config.key, state.config.admin_key
    if key is None and admin_key is None:
        return
    if _same(given, admin_key):
        return
    if not _same(given, key):
        raise PlatformError(401, "authorization_error", "No user found for Key ID and Secret")
    if admin:
        raise PlatformError(403, "authorization_error", "This operation needs an ADMIN-scoped API key")


def _ids(request: Request, name: str, *, required: bool) -> list[str]:
    ids = request.query_params.getlist(name)
    if required and not ids:
        raise PlatformError(400, "validation_error", f"{name} is required (1 to {MAX_IDS} values)")
    if len(ids) > MAX_IDS:
        raise PlatformError(400, "validation_error", f"at most {MAX_IDS} {name} values, got {len(ids)}")
    return ids


def _moment(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise PlatformError(400, "validation_error", f"{name} must be an ISO 8601 date-time") from None


def _page(items: list[Any], request: Request, key: str, default_limit: int, max_limit: int) -> JSONResponse:
    try:
        limit = int(request.query_params.get("limit") or default_limit)
        offset = int(request.query_params.get("cursor") or 0)
    except ValueError:
        raise PlatformError(400, "validation_error", "limit and cursor must be integers") from None
    if not 1 <= limit <= max_limit:
        raise PlatformError(400, "validation_error", f"limit must be from 1 to {max_limit}")
    chunk = items[offset : offset + limit]
    more = offset + limit < len(items)
    return JSONResponse({key: chunk, "next_cursor": str(offset + limit) if more else None, "has_more": more})


def platform_routes(state: EmulatorState) -> list[Route]:
    def model_entry(endpoint_id: str, expand: list[str]) -> dict[str, Any]:
        app = next((a for a in state.registry.all() if a.app_id == endpoint_id), None)
        deprecated = endpoint_id in state.ledger.deprecations
        metadata: dict[str, Any] = {
            "display_name": endpoint_id.rsplit("/", 1)[-1],
            "category": "emulated",
            "description": app.description if app else "",
            "status": "deprecated" if deprecated else "active",
            "kind": "inference",
            "duration_estimate": 0.05,
        }
        if deprecated and state.ledger.deprecations[endpoint_id]:
            metadata["replacement_endpoint_id"] = state.ledger.deprecations[endpoint_id]
        entry: dict[str, Any] = {"endpoint_id": endpoint_id, "metadata": metadata}
        if "openapi-3.0" in expand:
            entry["openapi"] = openapi_document(endpoint_id)
        return entry

    async def models(request: Request) -> Response:
        check_scope(state, request, admin=False)
        ids = _ids(request, "endpoint_id", required=False)
        known = {app.app_id for app in state.registry.all()}
        chosen = [i for i in ids if i in known] if ids else sorted(known)
        expand = request.query_params.getlist("expand")
        return _page([model_entry(i, expand) for i in chosen], request, "models", 50, 100)

    async def pricing(request: Request) -> Response:
        check_scope(state, request, admin=False)
        ids = _ids(request, "endpoint_id", required=True)
        prices = [
            {"endpoint_id": i, "unit_price": e.unit_price, "unit": e.unit, "currency": e.currency}
            for i in ids
            if (e := PRICE_TABLE.get(i)) is not None
        ]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})

    async def estimate(request: Request) -> Response:
        check_scope(state, request, admin=False)
        try:
            body = json.loads(await request.body())
            kind, endpoints = body["estimate_type"], dict(body["endpoints"])
        except (ValueError, KeyError, TypeError):
            raise PlatformError(400, "validation_error", "expected {estimate_type, endpoints}") from None
        field_name = {"historical_api_price": "call_quantity", "unit_price": "unit_quantity"}.get(kind)
        if field_name is None:
            raise PlatformError(400, "validation_error", f"unknown estimate_type {kind!r}")
        total = 0.0
        for endpoint_id, quantities in endpoints.items():
            entry = PRICE_TABLE.get(endpoint_id)
            amount = quantities.get(field_name) if isinstance(quantities, dict) else None
            if entry is None or not isinstance(amount, (int, float)) or isinstance(amount, bool):
                raise PlatformError(400, "validation_error", f"{endpoint_id}: needs a price and {field_name}")
            if kind == "unit_price":
                total += amount * entry.unit_price
            else:
                average = state.ledger.average_cost(endpoint_id)
                total += amount * (average if average is not None else entry.typical_units * entry.unit_price)
        return JSONResponse({"estimate_type": kind, "total_cost": round(total, 12), "currency": "USD"})

    async def billing_events(request: Request) -> Response:
        check_scope(state, request, admin=True)
        ids = set(_ids(request, "request_id", required=False))
        endpoints = set(_ids(request, "endpoint_id", required=False))
        start = _moment(request, "start", 0.0)
        end = _moment(request, "end", float("inf"))
        events = [
            e.to_json()
            for e in state.ledger.events.values()
            if (not ids or e.request_id in ids)
            and (not endpoints or e.endpoint_id in endpoints)
            and start <= e.timestamp < end
        ]
        return _page(events, request, "billing_events", 10_000, 10_000)

    async def history(request: Request) -> Response:
        check_scope(state, request, admin=False)
        endpoint_id = _ids(request, "endpoint_id", required=True)[0]
        request_id = request.query_params.get("request_id")
        now = time.time()
        start = _moment(request, "start", now - (90 if request_id else 1) * DAY_S)
        end = _moment(request, "end", now + 1.0)
        status = request.query_params.get("status")
        payloads = "payloads" in request.query_params.getlist("expand")
        records: list[Any] = [*state.engine.requests.values(), *state.ledger.runs]
        chosen = [
            r
            for r in records
            if endpoint_id in (r.endpoint_id, getattr(r, "app_id", r.endpoint_id))
            and start <= r.submitted_at < end
            and (request_id is None or r.request_id == request_id)
        ]
        chosen.sort(key=lambda r: r.submitted_at, reverse=True)
        items = [history_item(r, payloads) for r in chosen]
        if status is not None:
            items = [i for i in items if _status_of(i["status_code"]) == status]
        return _page(items, request, "items", 50, 100)

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if any("platform" in (rule.endpoints or []) for rule in state.faults.rules):
                fault = await state.inject_fault(request, "platform")
                if fault is not None:
                    return fault  # type: ignore[no-any-return]
            state.stats.incr("platform_calls")
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except PlatformError as err:
                return err.response()

        return endpoint

    return [
        Route(f"{PREFIX}/models", guarded(models), methods=["GET"]),
        Route(f"{PREFIX}/models/pricing", guarded(pricing), methods=["GET"]),
        Route(f"{PREFIX}/models/pricing/estimate", guarded(estimate), methods=["POST"]),
        Route(f"{PREFIX}/models/billing-events", guarded(billing_events), methods=["GET"]),
        Route(f"{PREFIX}/models/requests/by-endpoint", guarded(history), methods=["GET"]),
    ]


def _status_of(code: int | None) -> str | None:
    if code is None:
        return None
    return "success" if code < 400 else ("user_error" if code < 500 else "error")
