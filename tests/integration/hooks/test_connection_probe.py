"""``FalHook.test_connection`` (the UI's Test button) against the emulator: a good key passes, a
wrong key and an unreachable host fail with messages that tell them apart, and nothing is paid."""

from __future__ import annotations

import json

import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.hooks.fal import FalHook
from tests.e2e.harness import free_port


def test_a_good_key_passes_without_submitting(fal_emulator_conn: FalEmulator) -> None:
    ok, message = FalHook().test_connection()
    assert ok is True, message
    assert fal_emulator_conn.queue_url in message
    assert fal_emulator_conn.stats()["submits_total"] == 0


def test_a_wrong_key_is_named_as_such(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = fal_emulator_conn.connection_json().replace(fal_emulator_conn.key or "", "wrong-id:wrong-secret")
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", bad)
    ok, message = FalHook().test_connection()
    assert ok is False
    assert "rejected the API key" in message and "password" in message and "wrong-secret" not in message


def test_an_unreachable_host_is_named_as_such(
    fal_emulator: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/queue"
    conn = json.loads(fal_emulator.connection_json())
    conn["host"] = dead
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(conn))
    ok, message = FalHook().test_connection()
    assert ok is False
    assert "Could not reach" in message and dead in message and "host field" in message


def test_no_key_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "AIRFLOW_CONN_FAL_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_FAL_NOKEY", json.dumps({"conn_type": "fal", "host": "http://127.0.0.1:9/q"})
    )
    ok, message = FalHook("fal_nokey").test_connection()
    assert ok is False and "fal_nokey" in message
