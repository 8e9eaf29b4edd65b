"""Fault injection: each kind, endpoint/app filters, next-N mode, seeded rates, counters."""

from __future__ import annotations

import time

import httpx
import pytest

from fal_provider.emulator.faults import FaultConfig, parse_cli_fault
from fal_provider.emulator.testing import FalEmulator


def test_429_with_retry_after_for_next_n_submits(client: httpx.Client, emu: FalEmulator):
    emu.set_faults(kind="429", count=2, endpoints=["submit"], retry_after=3)
    codes = [client.post("/queue/emulator/echo", json={}).status_code for _ in range(3)]
    assert codes == [429, 429, 200]
    limited = emu.stats()["faults_injected"]
    assert limited == {"429": 2}
    emu.set_faults(kind="429", count=1)
    response = client.post("/run/emulator/echo", json={})
    assert (response.status_code, response.headers["retry-after"]) == (429, "1")


@pytest.mark.parametrize("code", ["502", "503"])
def test_ingress_errors_look_like_nginx(client: httpx.Client, emu: FalEmulator, code: str):
    emu.set_faults(kind=code, count=1, endpoints=["status"])
    response = client.get("/queue/emulator/echo/requests/any/status")
    assert response.status_code == int(code)
    assert "nginx" in response.text
    assert "x-fal-request-id" not in response.headers


def test_endpoint_and_app_filters(client: httpx.Client, emu: FalEmulator):
    emu.set_faults(kind="500", rate=1.0, endpoints=["run"], apps=["emulator/fail"])
    assert client.post("/run/emulator/echo", json={}).status_code == 200
    assert client.post("/queue/emulator/fail", json={}).status_code == 200
    failed = client.post("/run/emulator/fail", json={"kind": "validation"})
    assert failed.status_code == 500 and failed.json()["error_type"] == "internal_error"


def test_slow_responses(client: httpx.Client, emu: FalEmulator):
    emu.set_faults(kind="slow", count=1, delay_s=0.5, endpoints=["run"])
    started = time.monotonic()
    assert client.post("/run/emulator/echo", json={"a": 1}).json() == {"a": 1}
    assert time.monotonic() - started >= 0.45


@pytest.mark.parametrize("kind", ["drop", "drop_mid"])
def test_dropped_connections_are_transport_errors(client: httpx.Client, emu: FalEmulator, kind: str):
    emu.set_faults(kind=kind, count=1, endpoints=["run"])
    with pytest.raises(httpx.TransportError):
        client.post("/run/emulator/echo", json={})
    assert client.post("/run/emulator/echo", json={"ok": True}).json() == {"ok": True}
    assert emu.stats()["faults_injected"] == {kind: 1}


def test_token_and_upload_endpoints_can_fail(client: httpx.Client, emu: FalEmulator):
    emu.set_faults(
        {
            "rules": [
                {"kind": "503", "count": 1, "endpoints": ["token"]},
                {"kind": "429", "count": 1, "endpoints": ["upload"]},
            ]
        }
    )
    assert client.post("/rest/tokens/", json={"allowed_apps": ["echo"]}).status_code == 503
    assert client.post("/rest/storage/upload/initiate", json={}).status_code == 429
    assert client.post("/rest/tokens/", json={"allowed_apps": ["echo"]}).status_code == 200


def test_rates_are_deterministic_given_a_seed():
    def pattern(seed: int) -> list[bool]:
        config = FaultConfig.from_json({"seed": seed, "rules": [{"kind": "429", "rate": 0.5}]})
        return [config.pick("submit") is not None for _ in range(40)]

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 5 < sum(pattern(7)) < 35


def test_fault_config_validation_and_cli_syntax(emu: FalEmulator):
    bad = httpx.post(f"{emu.base_url}/_emulator/faults", json={"kind": "explode"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "rules.0.kind"
    assert parse_cli_fault("429:0.2@submit,status") == {
        "kind": "429",
        "rate": 0.2,
        "endpoints": ["submit", "status"],
    }
    assert parse_cli_fault("503#2@result") == {"kind": "503", "count": 2, "endpoints": ["result"]}
    assert parse_cli_fault("drop") == {"kind": "drop", "rate": 1.0}
    assert parse_cli_fault("after_accept/502#1@submit") == {
        "kind": "after_accept",
        "answer": "502",
        "count": 1,
        "endpoints": ["submit"],
    }
    emu.set_faults(kind="429", count=1)
    assert httpx.get(f"{emu.base_url}/_emulator/faults").json()["rules"][0]["kind"] == "429"
    emu.reset()
    assert httpx.get(f"{emu.base_url}/_emulator/faults").json()["rules"] == []
