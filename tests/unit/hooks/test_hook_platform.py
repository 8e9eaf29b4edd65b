"""Platform API logic without a server: the error envelope, batching, caching, schema checks."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fal_provider.exceptions import (
    FalAuthError,
    FalBadRequestError,
    FalInputError,
    FalNotFoundError,
    FalRateLimitError,
    FalServerError,
    FalValidationError,
    error_from_response,
)
from fal_provider.hooks import platform
from fal_provider.hooks._calls import DEFAULT_PLATFORM_URL, resolve_settings
from fal_provider.hooks.platform import ModelInfo, TtlCache, check_arguments, clear_caches
from tests.unit.hooks.hook_fakes import Script, connection_json, mock_hook, ok

PLATFORM = "http://fal.test/platform/v1"
ADMIN = "admin-key-id:admin-key-secret"


@pytest.fixture(autouse=True)
def platform_conn(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_caches()
    platform._failures.clear()
    conn = connection_json()
    import json

    data = json.loads(conn)
    data["extra"].update({"platform_url": PLATFORM, "admin_api_key": ADMIN})
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(data))


def envelope(kind: str, message: str = "nope", status: int = 400) -> httpx.Response:
    body = {
        "error": {"type": kind, "message": message, "docs_url": "https://fal.ai/docs/x", "request_id": "pr-1"}
    }
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("kind", "status", "cls"),
    [
        ("authorization_error", 403, FalAuthError),
        ("validation_error", 400, FalValidationError),
        ("not_found", 404, FalNotFoundError),
        ("rate_limited", 429, FalRateLimitError),
        ("server_error", 500, FalServerError),
        ("not_implemented", 501, FalBadRequestError),
    ],
)
def test_error_envelope_maps_to_typed_errors(kind: str, status: int, cls: type[Exception]) -> None:
    response = envelope(kind, "what went wrong", status)
    err = error_from_response(status, response.headers, response.content, context="fal prices")
    assert type(err) is cls
    assert err.error_type == kind and err.request_id == "pr-1" and err.http_status == status
    assert "what went wrong" in str(err) and "https://fal.ai/docs/x" in str(err)


def test_inference_bodies_with_an_error_string_are_not_platform_envelopes() -> None:
    err = error_from_response(400, httpx.Headers(), b'{"error": "bad", "detail": "x"}', context="c")
    assert type(err) is FalBadRequestError and err.detail == "x"


def test_hook_raises_the_envelope_error_without_retrying_a_permanent_one() -> None:
    script = Script(envelope("validation_error", "endpoint_id: too many"))
    with pytest.raises(FalValidationError, match="too many"):
        mock_hook(script).get_pricing(["a/b"])
    assert script.calls == 1


def _ids_of(request: httpx.Request) -> list[str]:
    return parse_qs(urlsplit(str(request.url)).query)["endpoint_id"]


def prices_for(request: httpx.Request) -> httpx.Response:
    ids = _ids_of(request)
    return ok(
        {"prices": [{"endpoint_id": i, "unit_price": 0.01, "unit": "images", "currency": "usd"} for i in ids]}
    )


def test_pricing_batches_fifty_ids_per_call_and_caches_them() -> None:
    script = Script(prices_for)
    hook = mock_hook(script)
    ids = [f"owner/app-{n}" for n in range(120)]
    prices = hook.get_pricing(ids + ids[:5])  # duplicates are asked for once
    assert len(prices) == 120 and prices["owner/app-7"].currency == "USD"
    assert [len(_ids_of(r)) for r in script.requests] == [50, 50, 20]
    assert all(str(r.url).startswith(f"{PLATFORM}/models/pricing?") for r in script.requests)
    hook.get_pricing([*ids[:60], "owner/new"])
    assert script.calls == 4 and _ids_of(script.requests[-1]) == ["owner/new"]


async def test_async_pricing_batches_concurrently(async_transport: Any) -> None:
    script = Script(prices_for)
    async_transport(script)
    from fal_provider.hooks.fal import FalHook

    prices = await FalHook().aget_pricing([f"o/a{n}" for n in range(101)])
    assert len(prices) == 101
    assert sorted(len(_ids_of(r)) for r in script.requests) == [1, 50, 50]


def test_cache_entries_expire_after_their_lifetime() -> None:
    now = [100.0]
    cache: TtlCache[str, int] = TtlCache(clock=lambda: now[0])
    cache.put("price", 1, ttl=60)
    now[0] = 159.9
    assert cache.get("price") == 1
    now[0] = 160.0
    assert cache.get("price") is None


def test_platform_cache_ttl_comes_from_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(platform.PRICES, "_clock", lambda: clock[0])
    import json

    data = json.loads(connection_json())
    data["extra"].update({"platform_url": PLATFORM, "platform_cache_ttl": 30})
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(data))
    script = Script(prices_for)
    hook = mock_hook(script)
    hook.get_pricing(["o/a"])
    clock[0] = 29.0
    hook.get_pricing(["o/a"])
    assert script.calls == 1
    clock[0] = 31.0
    hook.get_pricing(["o/a"])
    assert script.calls == 2


def warnings_of(hook: Any) -> list[str]:
    messages: list[str] = []
    hook.log.warning = lambda msg, *args: messages.append(msg % args)
    return messages


def test_price_or_none_never_raises_and_logs_the_reason_once() -> None:
    script = Script(httpx.ConnectError("down"))
    hook = mock_hook(script)
    warnings = warnings_of(hook)
    assert hook.price_or_none("fal-ai/flux/dev") is None
    assert hook.price_or_none("fal-ai/flux/dev") is None
    assert script.calls == 1  # one attempt (no retries), then the failure is remembered
    assert len(warnings) == 1 and "cost is unknown" in warnings[0] and "ConnectError" in warnings[0]


def test_default_platform_url_only_for_fals_own_queue() -> None:
    fal = resolve_settings(conn_id="c", password="a:b", host=None, extras={}, overrides={})
    assert fal.platform_url == DEFAULT_PLATFORM_URL
    assert ("https", "api.fal.ai", 443) in fal.key_origins
    custom = resolve_settings(conn_id="c", password="a:b", host="http://proxy:1/q", extras={}, overrides={})
    assert custom.platform_url is None
    named = resolve_settings(
        conn_id="c",
        password="a:b",
        host="http://proxy:1/q",
        extras={"platform_url": "proxy:2/v1", "admin_api_key": "x:y"},
        overrides={},
    )
    assert named.platform_url == "https://proxy:2/v1" and named.admin_key == "x:y"
    assert "x:y" not in repr(named)


SCHEMA_DOC = {
    "paths": {
        "/fal-ai/flux/dev": {
            "post": {
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/In"}}}
                }
            }
        },
        "/fal-ai/flux/dev/requests/{id}": {"get": {}},
    },
    "components": {
        "schemas": {
            "In": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string"},
                    "num_images": {"type": "integer", "minimum": 1, "maximum": 4},
                    "size": {"$ref": "#/components/schemas/Size"},
                    "seed": {"type": "integer", "nullable": True},
                },
            },
            "Size": {"type": "object", "properties": {"width": {"type": "integer"}}},
        }
    },
}


def model_body(**metadata: Any) -> dict[str, Any]:
    meta = {"status": "active", "duration_estimate": 0.5, **metadata}
    return {"models": [{"endpoint_id": "fal-ai/flux/dev", "metadata": meta, "openapi": SCHEMA_DOC}]}


def test_model_info_reads_the_openapi_input_schema() -> None:
    script = Script(ok(model_body()))
    info = mock_hook(script).get_model_info("fal-ai/flux/dev")
    assert info.duration_estimate == 0.5 and not info.deprecated
    assert info.input_schema is not None and info.input_schema["$ref"] == "#/components/schemas/In"
    query = parse_qs(urlsplit(str(script.requests[0].url)).query)
    assert query == {"endpoint_id": ["fal-ai/flux/dev"], "expand": ["openapi-3.0"]}


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({}, "missing required field prompt"),
        ({"prompt": 3}, "field prompt"),
        ({"prompt": "x", "num_images": 9}, "field num_images"),
        ({"prompt": "x", "size": {"width": "wide"}}, "field size.width"),
    ],
)
def test_schema_check_names_the_field(arguments: dict[str, Any], named: str) -> None:
    hook = mock_hook(Script(ok(model_body())))
    with pytest.raises(FalInputError, match=named) as raised:
        hook.validate_arguments("fal-ai/flux/dev", arguments)
    assert "nothing was submitted" in str(raised.value)


def test_schema_check_passes_valid_input_and_openapi_nullable() -> None:
    hook = mock_hook(Script(ok(model_body())))
    hook.validate_arguments("fal-ai/flux/dev", {"prompt": "x", "num_images": 2, "seed": None, "extra": 1})


def test_deprecated_model_warns_with_its_replacement() -> None:
    hook = mock_hook(Script(ok(model_body(status="deprecated", replacement_endpoint_id="fal-ai/flux-2"))))
    warnings = warnings_of(hook)
    hook.validate_arguments("fal-ai/flux/dev", {"prompt": "x"})
    assert warnings == ["fal model fal-ai/flux/dev is deprecated; fal recommends fal-ai/flux-2"]


def test_schema_check_is_skipped_when_the_platform_fails() -> None:
    script = Script(httpx.Response(503, text="<html>bad gateway</html>"))
    hook = mock_hook(script)
    hook.validate_arguments("fal-ai/flux/dev", {})  # no schema: not checked, not raised
    hook.validate_arguments("fal-ai/flux/dev", {})
    assert script.calls == 1


def test_unknown_model_is_not_found_and_check_arguments_without_schema_passes() -> None:
    with pytest.raises(FalNotFoundError):
        mock_hook(Script(ok({"models": []}))).get_model_info("someone/private-app")
    check_arguments(ModelInfo(endpoint_id="x/y"), {"anything": object()})


def test_billing_events_and_history_follow_cursors() -> None:
    pages = Script(
        ok(
            {
                "billing_events": [
                    {"request_id": "r1", "endpoint_id": "a/b", "output_units": 2, "cost_total": 0.02}
                ],
                "next_cursor": "c2",
                "has_more": True,
            }
        ),
        ok(
            {
                "billing_events": [{"request_id": "r2", "endpoint_id": "a/b", "cost_estimate_nano_usd": 5}],
                "next_cursor": None,
                "has_more": False,
            }
        ),
    )
    hook = mock_hook(pages)
    events = hook.get_billing_events(["r1", "r2"])
    assert [e.request_id for e in events] == ["r1", "r2"] and events[1].cost_estimate_nano_usd == 5
    assert "cursor=c2" in str(pages.requests[1].url)
    assert pages.requests[0].headers["Authorization"] == f"Key {ADMIN}"
    item = {
        "request_id": "q",
        "endpoint_id": "a/b",
        "json_input": {"p": 1},
        "json_output": {"o": 2},
        "status_code": 422,
    }
    history = mock_hook(Script(ok({"items": [item], "has_more": False}))).get_request_history("a/b")
    assert (
        history[0].input == {"p": 1} and history[0].output == {"o": 2} and history[0].status == "user_error"
    )


def test_bad_platform_arguments_fail_before_the_network() -> None:
    script = Script(ok({}))
    hook = mock_hook(script)
    for attempt in (
        lambda: hook.get_pricing(["../x"]),
        lambda: hook.get_billing_events(["a/b"]),
        lambda: hook.get_request_history("a/b", limit=0),
        lambda: hook.get_request_history("a/b", status="weird"),
        lambda: hook.estimate_cost({"a/b": -1}),
        lambda: hook.estimate_cost({"a/b": 1}, estimate_type="guess"),
        lambda: hook.get_request_history("a/b", start=12),  # type: ignore[arg-type]
    ):
        with pytest.raises(FalInputError):
            attempt()
    assert script.calls == 0


def test_billable_units_header_parsing() -> None:
    assert platform.billable_units(httpx.Response(200, headers={"x-fal-billable-units": "2.5"})) == 2.5
    assert platform.billable_units(httpx.Response(200, headers={"x-fal-billable-units": "lots"})) is None
    assert platform.billable_units(httpx.Response(200, headers={"x-fal-billable-units": "-1"})) is None
    assert platform.billable_units(httpx.Response(200)) is None


def test_the_admin_key_is_masked_in_task_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider.hooks import fal as fal_module

    masked: list[str] = []
    monkeypatch.setattr(fal_module, "mask_secret", masked.append)
    assert fal_module.FalHook().settings.admin_key == ADMIN
    assert ADMIN in masked


async def test_the_admin_key_is_masked_in_async_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider.hooks import _calls
    from fal_provider.hooks import fal as fal_module

    _calls.clear_connections()
    masked: list[str] = []

    async def record(secret: str) -> None:
        masked.append(secret)

    monkeypatch.setattr(fal_module, "amask_secret", record)
    assert (await fal_module.FalHook().aget_settings()).admin_key == ADMIN
    assert ADMIN in masked
