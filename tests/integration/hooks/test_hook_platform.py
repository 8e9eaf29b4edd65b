"""FalHook's Platform API calls over real HTTP against the emulator, each sync and async.

The emulator bills like fal (``emulator/pricing.py``): results carry ``x-fal-billable-units``,
each successful request has one billing event with its tags, history keeps payloads, and billing
events need the admin key.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalAuthError, FalInputError, FalMissingCredentialsError, FalRateLimitError
from fal_provider.hooks.fal import FalHook
from fal_provider.hooks.platform import clear_caches
from fal_provider.models import CompletedStatus, FalRequestRef


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_caches()


def done(hook: FalHook, ref: FalRequestRef, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(hook.get_status(ref), CompletedStatus):
            return
        time.sleep(0.02)
    raise AssertionError("request did not complete")


def flux(hook: FalHook, **extra: Any) -> FalRequestRef:
    ref = hook.submit("fal-ai/flux/schnell", {"prompt": "a cat", "num_images": 2, **extra})
    done(hook, ref)
    return ref


def test_results_carry_billable_units_in_three_unit_kinds(
    hook: FalHook, fal_emulator_conn: FalEmulator
) -> None:
    schnell = hook.fetch_result(flux(hook))
    assert schnell.billable_units == 2.0  # 2 images x 1 megapixel (1024x768 rounded up)
    assert schnell.data["images"] and schnell.request_id
    lcm = hook.run_with_usage("fal-ai/fast-lcm-diffusion", {"prompt": "x", "num_images": 3})
    assert lcm.billable_units == 3.0 and len(lcm.data["images"]) == 3
    image_url = schnell.data["images"][0]["url"]
    upscale = hook.submit("fal-ai/esrgan", {"image_url": image_url})
    done(hook, upscale)
    seconds = hook.fetch_result(upscale).billable_units
    assert seconds is not None and 0 < seconds < 30
    units = {
        p.endpoint_id: p.unit
        for p in hook.get_pricing(
            ["fal-ai/flux/schnell", "fal-ai/fast-lcm-diffusion", "fal-ai/esrgan"]
        ).values()
    }
    assert units == {
        "fal-ai/flux/schnell": "megapixels",
        "fal-ai/fast-lcm-diffusion": "images",
        "fal-ai/esrgan": "seconds",
    }
    assert hook.get_result(upscale)["image"]["url"]  # get_result still returns the data alone


async def test_async_results_carry_billable_units(ahook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    ref = await ahook.asubmit("fal-ai/flux/schnell", {"prompt": "a cat"})
    for _ in range(1500):
        if isinstance(await ahook.aget_status(ref), CompletedStatus):
            break
        await asyncio.sleep(0.02)
    fetched = await ahook.afetch_result(ref, max_bytes=1_000_000)
    assert fetched.billable_units == 1.0 and fetched.data["images"]
    ran = await ahook.arun_with_usage("emulator/echo", {"a": 1})
    assert ran.data == {"a": 1} and ran.billable_units == 1.0
    assert await ahook.arun("emulator/echo", {"a": 2}) == {"a": 2}


def test_failed_requests_are_not_billed(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    ref = hook.submit("emulator/fail", {"kind": "server"})
    done(hook, ref)
    assert fal_emulator_conn.billing()["count"] == 0


def test_pricing_model_info_and_estimate_sync(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    prices = hook.get_pricing(["fal-ai/flux/schnell", "emulator/echo", "unknown/model"])
    assert prices["fal-ai/flux/schnell"].unit_price == 0.003
    assert prices["fal-ai/flux/schnell"].currency == "USD"
    assert "unknown/model" not in prices
    info = hook.get_model_info("fal-ai/flux/schnell")
    assert info.input_schema is not None and info.duration_estimate == 0.05 and not info.deprecated
    assert "prompt" in json.dumps(info.input_schema)
    estimate = hook.estimate_cost({"fal-ai/flux/dev": 4})
    assert estimate.total_cost == pytest.approx(0.1) and estimate.currency == "USD"
    historical = hook.estimate_cost({"fal-ai/flux/schnell": 10}, estimate_type="historical_api_price")
    assert historical.total_cost == pytest.approx(0.03)


async def test_pricing_model_info_and_estimate_async(ahook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    prices = await ahook.aget_pricing("fal-ai/flux/dev")
    assert prices["fal-ai/flux/dev"].unit == "megapixels"
    info = await ahook.aget_model_info("fal-ai/esrgan")
    assert info.input_schema is not None
    estimate = await ahook.aestimate_cost({"fal-ai/esrgan": 10.0})
    assert estimate.total_cost == pytest.approx(0.0111)
    assert (await ahook.aprice_or_none("fal-ai/flux/dev")) is not None
    assert (await ahook.aprice_or_none("nobody/none")) is None


def test_prices_are_cached_per_process(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    hook.get_pricing(["fal-ai/flux/schnell"])
    hook.get_model_info("fal-ai/flux/schnell")
    before = fal_emulator_conn.stats()["platform_calls"]
    for _ in range(5):
        assert hook.price_or_none("fal-ai/flux/schnell") is not None
        FalHook().get_model_info("fal-ai/flux/schnell")
    assert fal_emulator_conn.stats()["platform_calls"] == before


def test_billing_events_with_tags_need_the_admin_key(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    tagged = hook.submit(
        "fal-ai/flux/schnell", {"prompt": "x"}, headers={"X-Fal-Tags": "airflow.dag=nightly,airflow.task=t2i"}
    )
    done(hook, tagged)
    units = hook.fetch_result(tagged).billable_units
    events = hook.get_billing_events([tagged.request_id])
    assert len(events) == 1
    event = events[0]
    assert event.output_units == units == 1.0
    assert event.unit_price == 0.003 and event.cost_total == pytest.approx(0.003)
    assert event.tags == {"airflow.dag": "nightly", "airflow.task": "t2i"}
    assert fal_emulator_conn.billed_total(**{"airflow.dag": "nightly"}) == pytest.approx(0.003)
    api_only = json.loads(fal_emulator_conn.connection_json())
    del api_only["extra"]["admin_api_key"]
    with pytest.raises(FalMissingCredentialsError, match="admin"):
        hook_without_admin(api_only).get_billing_events([tagged.request_id])
    api_only["extra"]["admin_api_key"] = fal_emulator_conn.key  # the API key in the admin field
    with pytest.raises(FalAuthError) as refused:
        hook_without_admin(api_only).get_billing_events([tagged.request_id])
    assert refused.value.http_status == 403 and refused.value.error_type == "authorization_error"


def hook_without_admin(conn: dict[str, Any]) -> FalHook:
    import os

    os.environ["AIRFLOW_CONN_FAL_NOADMIN"] = json.dumps(conn)
    return FalHook("fal_noadmin")


async def test_billing_events_async_and_paged(ahook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    ids = []
    for index in range(3):
        ran = await ahook.arun_with_usage("emulator/echo", {"i": index})
        assert ran.request_id
        ids.append(ran.request_id)
    events = await ahook.aget_billing_events(ids)
    assert sorted(e.request_id for e in events) == sorted(ids)
    assert all(e.cost_total == pytest.approx(0.0001) for e in events)


def test_request_history_with_payloads_sync(hook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    ref = flux(hook, seed=7)
    hidden = hook.submit("fal-ai/flux/schnell", {"prompt": "secret"}, options={"store_io": False})
    done(hook, hidden)
    history = hook.get_request_history("fal-ai/flux/schnell")
    by_id = {entry.request_id: entry for entry in history}
    entry = by_id[ref.request_id]
    assert entry.input == {"prompt": "a cat", "num_images": 2, "seed": 7}
    assert entry.output["images"] and entry.status == "success" and entry.status_code == 200
    assert entry.ended_at and entry.started_at
    assert by_id[hidden.request_id].input is None  # X-Fal-Store-IO: 0
    bare = hook.get_request_history("fal-ai/flux/schnell", with_payloads=False, request_id=ref.request_id)
    assert [e.request_id for e in bare] == [ref.request_id] and bare[0].input is None


async def test_request_history_async_pages_and_in_flight(
    ahook: FalHook, fal_emulator_conn: FalEmulator
) -> None:
    running = await ahook.asubmit("emulator/echo", {"duration_s": 5})
    for index in range(3):
        await ahook.arun("emulator/echo", {"n": index})
    history = await ahook.aget_request_history("emulator/echo", limit=1)  # one per page: 4 pages
    assert len(history) == 4
    in_flight = next(e for e in history if e.request_id == running.request_id)
    assert in_flight.status == "in_progress" and in_flight.ended_at is None
    assert in_flight.input == {"duration_s": 5}
    assert sorted(e.input["n"] for e in history if e.input and "n" in e.input) == [0, 1, 2]
    await ahook.acancel(running)


def test_platform_errors_are_typed(hook: FalHook, fal_emulator_conn: FalEmulator, waits: list[float]) -> None:
    fal_emulator_conn.set_faults(kind="429", count=1, endpoints=["platform"], retry_after=0.01)
    assert hook.get_pricing(["fal-ai/flux/dev"])["fal-ai/flux/dev"].unit_price == 0.025  # retried once
    with pytest.raises(FalInputError):
        hook.get_request_history("fal-ai/flux/dev", limit=500)
    fal_emulator_conn.set_faults(kind="429", count=10, endpoints=["platform"], retry_after=0.01)
    clear_caches()
    with pytest.raises(FalRateLimitError):
        hook.get_pricing(["fal-ai/flux/dev"])
    assert hook.price_or_none("fal-ai/flux/schnell") is None  # never raises


def test_no_platform_without_platform_url(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = json.loads(fal_emulator_conn.connection_json())
    del conn["extra"]["platform_url"]
    monkeypatch.setenv("AIRFLOW_CONN_FAL_OTHER", json.dumps(conn))
    hook = FalHook("fal_other")
    with pytest.raises(FalInputError, match="platform_url"):
        hook.get_pricing(["fal-ai/flux/dev"])
    assert hook.price_or_none("fal-ai/flux/dev") is None
    hook.validate_arguments("fal-ai/flux/dev", {})  # no schema available: not checked


def test_validate_arguments_against_the_emulators_schemas(
    hook: FalHook, fal_emulator_conn: FalEmulator
) -> None:
    with pytest.raises(FalInputError, match="missing required field prompt"):
        hook.validate_arguments("fal-ai/flux/schnell", {"num_images": 1})
    with pytest.raises(FalInputError, match="field num_images"):
        hook.validate_arguments("fal-ai/flux/schnell", {"prompt": "x", "num_images": "2"})
    hook.validate_arguments("fal-ai/flux/schnell", {"prompt": "x", "seed": None})
    hook.validate_arguments("emulator/realtime", {"anything": 1})  # no schema served: not checked
    assert fal_emulator_conn.stats()["submits_total"] == 0
    fal_emulator_conn.deprecate("fal-ai/flux/dev", "fal-ai/flux/schnell")
    messages: list[str] = []
    hook.log.warning = lambda msg, *args: messages.append(msg % args)  # type: ignore[method-assign]
    hook.validate_arguments("fal-ai/flux/dev", {"prompt": "x"})
    assert messages == ["fal model fal-ai/flux/dev is deprecated; fal recommends fal-ai/flux/schnell"]


async def test_avalidate_arguments(ahook: FalHook, fal_emulator_conn: FalEmulator) -> None:
    with pytest.raises(FalInputError, match="missing required field image_url"):
        await ahook.avalidate_arguments("fal-ai/esrgan", {"scale": 2})
    with pytest.raises(FalInputError, match="field scale"):
        await ahook.avalidate_arguments("fal-ai/esrgan", {"image_url": "u", "scale": 9})
    await ahook.avalidate_arguments("fal-ai/esrgan", {"image_url": "u"})
