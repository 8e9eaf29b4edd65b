"""The fal-emulator CLI as a subprocess, and the in-process testing helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import unquote

import httpx

from fal_provider.emulator.testing import FalEmulator


def test_cli_prints_url_and_serves():
    cmd = [
        sys.executable,
        "-m",
        "fal_provider.emulator",
        "--port",
        "0",
        "--key",
        "a:b",
        "--fault",
        "429#1@run",
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        prefix = "fal-emulator listening on http://127.0.0.1:"
        assert line.startswith(prefix) and int(line[len(prefix) :]) > 0
        base = line.split(" on ", 1)[1]
        assert httpx.get(f"{base}/_emulator/health", timeout=10).json() == {"status": "ok"}
        headers = {"Authorization": "Key a:b"}
        assert httpx.post(f"{base}/run/emulator/echo", json={}, headers=headers).status_code == 429
        assert httpx.post(f"{base}/run/emulator/echo", json={"x": 1}, headers=headers).json() == {"x": 1}
        assert "a:b" not in httpx.get(f"{base}/_emulator/config").text
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.stderr is not None
    assert "a:b" not in process.stderr.read()


def test_cli_help_documents_every_flag():
    output = subprocess.run(
        [sys.executable, "-m", "fal_provider.emulator", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--key",
        "--admin-key",
        "--concurrency",
        "--signing-key-file",
        "--latency-scale",
        "--fault",
        "--ping-interval",
        "--webhook-attempts",
        "--public-url",
        "--seed",
    ):
        assert flag in output


def test_connection_helpers(emu: FalEmulator):
    conn = json.loads(emu.connection_json("fal_test"))
    assert conn["conn_type"] == "fal" and conn["password"] == emu.key and conn["host"] == emu.queue_url
    assert conn["extra"] == {
        "run_url": emu.run_url,
        "rest_url": emu.rest_url,
        "cdn_url": emu.cdn_url,
        "jwks_url": emu.jwks_url,
        "platform_url": emu.platform_url,
        "admin_api_key": emu.admin_key,
        "request_page_url": f"{emu.base_url}/_emulator/requests/{{request_id}}/view",
        "webhook_allowed_user_ids": emu.user_id,
        "webhook_secret": emu.webhook_secret,
    }
    uri = emu.connection_uri()
    assert uri.startswith("fal://") and unquote(uri.split("@", 1)[1].split("/?")[0]) == emu.queue_url
    assert emu.fal_client_env() == {"FAL_KEY": emu.key}


def test_patch_fal_client_restores_globals(emu: FalEmulator):
    import fal_client.client as fal_module

    before = (fal_module.QUEUE_URL_FORMAT, fal_module.REST_URL, os.environ.get("FAL_KEY"))
    with emu.patch_fal_client():
        assert fal_module.QUEUE_URL_FORMAT == emu.queue_url + "/"
        assert fal_module.REALTIME_URL_FORMAT.startswith("ws://127.0.0.1:")
        assert os.environ["FAL_KEY"] == emu.key
    assert (fal_module.QUEUE_URL_FORMAT, fal_module.REST_URL, os.environ.get("FAL_KEY")) == before


def test_connection_fixture_sets_airflow_env(fal_emulator_conn: FalEmulator):
    assert json.loads(os.environ["AIRFLOW_CONN_FAL_DEFAULT"])["host"] == fal_emulator_conn.queue_url
