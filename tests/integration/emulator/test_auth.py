"""Key auth on every fal endpoint; control endpoints, JWKS and CDN downloads stay open."""

from __future__ import annotations

import httpx
import pytest

from fal_provider.emulator.auth import FORMAT_DETAIL, WRONG_KEY_DETAIL
from fal_provider.emulator.testing import FalEmulator, run_emulator

PROTECTED = [
    ("POST", "/queue/emulator/echo"),
    ("GET", "/queue/emulator/echo/requests/x/status"),
    ("GET", "/queue/emulator/echo/requests/x"),
    ("PUT", "/queue/emulator/echo/requests/x/cancel"),
    ("POST", "/run/emulator/echo"),
    ("POST", "/run/emulator/stream/stream"),
    ("POST", "/rest/tokens/"),
    ("POST", "/rest/storage/auth/token?storage_type=fal-cdn-v3"),
    ("POST", "/rest/storage/upload/initiate?storage_type=gcs"),
    ("POST", "/cdn/files/upload"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_wrong_and_malformed_keys_are_401(emu: FalEmulator, method: str, path: str):
    url = emu.base_url + path
    missing = httpx.request(method, url, json={})
    assert missing.status_code == 401 and missing.json()["detail"]
    wrong = httpx.request(method, url, json={}, headers={"Authorization": "Key other-id:other-secret"})
    assert (wrong.status_code, wrong.json()) == (401, {"detail": WRONG_KEY_DETAIL})
    for bad in ("Key nocolon", "Bearer abc", "Key :secret"):
        malformed = httpx.request(method, url, json={}, headers={"Authorization": bad})
        assert malformed.status_code == 401
        if not path.startswith("/cdn"):  # the CDN reads "Bearer" as a storage token instead
            assert malformed.json() == {"detail": FORMAT_DETAIL}


def test_open_endpoints_need_no_key(emu: FalEmulator, client: httpx.Client):
    assert httpx.get(f"{emu.base_url}/_emulator/health").json() == {"status": "ok"}
    keys = httpx.get(emu.jwks_url).json()["keys"]
    assert keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519" and keys[0]["kid"]
    url = client.post("/run/fal-ai/flux/schnell", json={"prompt": "p"}).json()["images"][0]["url"]
    assert httpx.get(url).status_code == 200


def test_without_configured_key_any_well_formed_key_is_accepted():
    with run_emulator(key=None) as emu:
        ok = httpx.post(f"{emu.run_url}/emulator/echo", json={"a": 1}, headers={"Authorization": "Key a:b"})
        assert ok.json() == {"a": 1}
        bad = httpx.post(f"{emu.run_url}/emulator/echo", json={}, headers={"Authorization": "Key ab"})
        assert bad.status_code == 401
