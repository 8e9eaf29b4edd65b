"""Realtime WebSocket: JWT from /rest/tokens/, Key header, msgpack echo, control frames, drops."""

from __future__ import annotations

import json

import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fal_provider.emulator.testing import FalEmulator


def token_for(client: httpx.Client, alias: str, ttl: int = 120) -> str:
    response = client.post("/rest/tokens/", json={"allowed_apps": [alias], "token_expiration": ttl})
    assert response.status_code == 200
    token = response.json()
    assert isinstance(token, str)
    return token


def ws_url(emu: FalEmulator, path: str, **query: str) -> str:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{emu.realtime_url}/{path}" + (f"?{suffix}" if suffix else "")


def test_token_session_echoes_msgpack(client: httpx.Client, emu: FalEmulator):
    token = token_for(client, "realtime")
    with connect(ws_url(emu, "emulator/realtime/realtime", fal_jwt_token=token)) as ws:
        for n in range(3):
            ws.send(msgpack.packb({"n": n, "blob": b"\x00\x01"}, use_bin_type=True))
            assert msgpack.unpackb(ws.recv(), raw=False) == {"n": n, "blob": b"\x00\x01"}
    stats = emu.stats()
    assert stats["realtime_sessions"] == 1 and stats["realtime_messages"] == 3
    assert stats["tokens"] == 1


@pytest.mark.parametrize("token_app", ["other-app", None])
def test_bad_token_gets_unauthorized_frame_and_policy_close(
    client: httpx.Client, emu: FalEmulator, token_app
):
    token = token_for(client, token_app) if token_app else "forged.token.value"
    with connect(ws_url(emu, "emulator/realtime/realtime", fal_jwt_token=token)) as ws:
        frame = json.loads(ws.recv())
        assert frame["type"] == "x-fal-error" and frame["error"] == "Unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_expired_token_is_refused(client: httpx.Client, emu: FalEmulator):
    token = token_for(client, "realtime", ttl=1)
    import time

    time.sleep(2.1)
    with connect(ws_url(emu, "emulator/realtime/realtime", fal_jwt_token=token)) as ws:
        assert json.loads(ws.recv())["error"] == "Unauthorized"


def test_key_header_alternative_and_missing_auth(emu: FalEmulator):
    headers = {"Authorization": f"Key {emu.key}"}
    with connect(ws_url(emu, "emulator/echo/realtime"), additional_headers=headers) as ws:
        ws.send(msgpack.packb({"a": 1}))
        assert msgpack.unpackb(ws.recv()) == {"a": 1}
    with connect(ws_url(emu, "emulator/echo/realtime")) as ws:
        assert json.loads(ws.recv())["error"] == "Unauthorized"


def test_app_without_realtime_endpoint_closes_with_error(emu: FalEmulator):
    headers = {"Authorization": f"Key {emu.key}"}
    with connect(ws_url(emu, "emulator/fail/realtime"), additional_headers=headers) as ws:
        frame = json.loads(ws.recv())
        assert frame["type"] == "x-fal-error" and frame["error"] == "NOT_FOUND"


def test_drop_after_closes_abruptly_and_error_control(emu: FalEmulator):
    headers = {"Authorization": f"Key {emu.key}"}
    with connect(ws_url(emu, "emulator/realtime/realtime", drop_after="2"), additional_headers=headers) as ws:
        ws.send(msgpack.packb({"i": 1}))
        ws.send(msgpack.packb({"x_fal_error": "TIMEOUT"}))
        assert msgpack.unpackb(ws.recv()) == {"i": 1}
        assert json.loads(ws.recv()) == {
            "type": "x-fal-error",
            "error": "TIMEOUT",
            "reason": "requested by input",
        }
        ws.send(msgpack.packb({"i": 2}))
        assert msgpack.unpackb(ws.recv()) == {"i": 2}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is None  # no close frame: an abrupt drop


def test_invalid_max_buffering_refused(emu: FalEmulator):
    headers = {"Authorization": f"Key {emu.key}"}
    with connect(
        ws_url(emu, "emulator/realtime/realtime", max_buffering="99"), additional_headers=headers
    ) as ws:
        assert json.loads(ws.recv())["error"] == "BAD_REQUEST"
