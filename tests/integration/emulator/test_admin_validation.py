"""Control inputs are checked strictly: a bad one is a 400 naming the field, and changes nothing."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.emulator.validation import InvalidSettings
from tests.integration.emulator.helpers import submit, wait_completed

KNOWN_RULE = {"kind": "429", "count": 1, "endpoints": ["run"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "429", "count": "5"}, "rules.0.count"),
        ({"kind": "429", "count": -1}, "rules.0.count"),
        ({"kind": "429", "count": True}, "rules.0.count"),
        ({"kind": "429", "rate": 1.5}, "rules.0.rate"),
        ({"kind": "429", "rate": "0.5"}, "rules.0.rate"),
        ({"kind": "429", "rate": -0.1}, "rules.0.rate"),
        ({"kind": "429", "retry_after": -1}, "rules.0.retry_after"),
        ({"kind": "slow", "delay_s": "1"}, "rules.0.delay_s"),
        ({"kind": "429", "endpoints": ["sumbit"]}, "rules.0.endpoints.0"),
        ({"kind": "429", "endpoints": "submit"}, "rules.0.endpoints"),
        ({"kind": "429", "apps": [""]}, "rules.0"),
        ({"kind": "429", "counts": 2}, "rules.0.counts"),
        ({"kind": "429", "count": 1, "rate": 0.5}, "rules.0"),
        ({"kind": "webhook_drop", "endpoints": ["submit"]}, "rules.0"),
        ({"kind": "500", "endpoints": ["webhook"]}, "rules.0"),
        ({"kind": "after_accept", "answer": "500"}, "rules.0.answer"),
        ({"seed": "1", "rules": []}, "seed"),
        ({"rules": [KNOWN_RULE], "sed": 1}, "sed"),
        ({"rules": {"kind": "429"}}, "rules"),
        ([{"kind": "429", "count": 1}, {"kind": "nope"}], "rules.1.kind"),
        ("429", "(body)"),
    ],
)
def test_bad_fault_bodies_are_refused_and_change_nothing(
    client: httpx.Client, emu: FalEmulator, body: Any, field: str
) -> None:
    before = emu.set_faults(KNOWN_RULE)
    refused = httpx.post(f"{emu.base_url}/_emulator/faults", json=body)
    assert refused.status_code == 400, refused.text
    assert field in [error["field"] for error in refused.json()["errors"]]
    assert f"{field}: " in refused.json()["detail"]
    assert httpx.get(f"{emu.base_url}/_emulator/faults").json() == before
    # The earlier rule still fires exactly once, as if the bad request had never been sent.
    assert client.post("/run/emulator/echo", json={}).status_code == 429
    assert client.post("/run/emulator/echo", json={"ok": 1}).json() == {"ok": 1}
    assert emu.stats()["faults_injected"] == {"429": 1}


def test_fault_body_that_is_not_json(emu: FalEmulator) -> None:
    refused = httpx.post(f"{emu.base_url}/_emulator/faults", content=b"{count: 5")
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"field": "(body)", "message": "body is not valid JSON", "type": "json_invalid"}
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"concurrency": "abc"}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 2.0}, "concurrency"),
        ({"concurrency": 3, "latency_scale": "fast"}, "latency_scale"),
        ({"latency_scale": -1}, "latency_scale"),
        ({"ping_interval_s": 0}, "ping_interval_s"),
        ({"webhook_attempts": 0}, "webhook_attempts"),
        ({"webhook_timeout_s": None}, "webhook_timeout_s"),
        ({"app_concurrency": {"emulator/echo": 0}}, "app_concurrency.emulator/echo"),
        ({"app_concurrency": {"emulator/echo": "2"}}, "app_concurrency.emulator/echo"),
        ({"app_concurrency": ["emulator/echo"]}, "app_concurrency"),
        ({"user_id": "a\r\nX-Injected: 1"}, "user_id"),
        ({"public_url": "ftp://files"}, "public_url"),
        ({"concurrancy": 2}, "concurrancy"),
        ([{"concurrency": 2}], "(body)"),
    ],
)
def test_bad_config_is_refused_and_changes_nothing(
    client: httpx.Client, emu: FalEmulator, changes: Any, field: str
) -> None:
    before = emu.configure(concurrency=1, app_concurrency={"emulator/fail": 2})
    refused = httpx.post(f"{emu.base_url}/_emulator/config", json=changes)
    assert refused.status_code == 400, refused.text
    assert field in [error["field"] for error in refused.json()["errors"]]
    assert httpx.get(f"{emu.base_url}/_emulator/config").json() == before
    # Still one runner slot: a second request waits behind a running one.
    running = submit(client, "emulator/echo", {"duration_s": 30})
    waiting = submit(client, "emulator/echo", {"n": 2})
    assert client.get(waiting["status_url"]).json()["status"] == "IN_QUEUE"
    client.put(running["cancel_url"])
    wait_completed(client, waiting["status_url"])
    assert client.get(waiting["response_url"]).json() == {"n": 2}


def test_a_mistyped_key_is_refused_without_echoing_it(emu: FalEmulator) -> None:
    refused = httpx.post(f"{emu.base_url}/_emulator/config", json={"key": "sekrit-without-colon"})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "key"
    assert "sekrit" not in refused.text
    with pytest.raises(InvalidSettings) as raised:
        FalEmulator(key="id:se cret")
    assert "se cret" not in str(raised.value)


def test_helpers_refuse_bad_startup_values() -> None:
    with pytest.raises(InvalidSettings, match="concurrency"):
        FalEmulator(concurrency=0)
    with pytest.raises(InvalidSettings, match=r"rules\.0\.count"):
        FalEmulator(faults={"kind": "429", "count": "5"})


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--concurrency", "0"], "concurrency"), (["--fault", "429#x"], "count"), (["--fault", "nope"], "kind")],
)
def test_cli_refuses_bad_values_with_exit_code_2(flags: list[str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fal_provider.emulator", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("fal-emulator: ") and named in result.stderr
