"""Realtime tokens expire (``token_expiration``); sessions must not depend on them after the handshake.

The emulator, like fal, checks the token when the WebSocket opens: an open session outlives its token,
a URL with an expired token is refused, and each opening of a session (a reconnect too) fetches a new one.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from websockets.sync.client import connect

from fal_provider.emulator.testing import FalEmulator
from fal_provider.hooks import fal
from fal_provider.hooks.fal import FalHook


@pytest.fixture
def opened_urls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The WebSocket URLs (with their token) the hook connects to, sync and async."""
    urls: list[str] = []

    def recording(module: Any, name: str) -> None:
        original = getattr(module, name)

        def connect_recording(url: str, **kwargs: Any) -> Any:
            urls.append(url)
            return original(url, **kwargs)

        monkeypatch.setattr(module, name, connect_recording)

    recording(fal, "ws_connect")
    recording(fal, "ws_connect_async")
    return urls


def test_open_session_outlives_its_token_and_reopening_fetches_a_new_one(
    hook: FalHook, fal_emulator_conn: FalEmulator, opened_urls: list[str]
) -> None:
    with hook.realtime("emulator/realtime", token_expiration=1) as session:
        session.send({"n": 1})
        assert session.recv(timeout=10) == {"n": 1}
        time.sleep(1.5)  # the token (exp rounded down to the second) has expired
        session.send({"n": 2})
        assert session.recv(timeout=10) == {"n": 2}
    with connect(opened_urls[0], open_timeout=10) as stale:
        assert "Invalid or expired token" in str(stale.recv(timeout=10)), "the old token no longer opens"
    with hook.realtime("emulator/realtime", token_expiration=1) as session:  # a reconnect
        session.send({"n": 3})
        assert session.recv(timeout=10) == {"n": 3}
    assert len(set(opened_urls)) == 2
    assert fal_emulator_conn.stats()["tokens"] == 2


async def test_each_arealtime_opening_fetches_its_own_token(
    ahook: FalHook, fal_emulator_conn: FalEmulator, opened_urls: list[str]
) -> None:
    for n in range(2):
        async with ahook.arealtime("emulator/realtime") as session:
            await session.send({"n": n})
            assert await session.recv(timeout=10) == {"n": n}
    assert len(opened_urls) == 2
    assert fal_emulator_conn.stats()["tokens"] == 2, "one token request per opening"
