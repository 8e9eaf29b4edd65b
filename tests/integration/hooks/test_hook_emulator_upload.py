"""Multipart uploads over real HTTP against the emulator's CDN, with the limits lowered to 1 MiB / 256 KiB."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.hooks import _upload
from fal_provider.hooks.fal import FalHook

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_upload, "MULTIPART_THRESHOLD", MIB)
    monkeypatch.setattr(_upload, "MULTIPART_PART_SIZE", 256 * 1024)


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(MIB + 300 * 1024))  # 6 parts, the last one short
    return path


def test_multipart_upload_round_trips(
    hook: FalHook, big_file: Path, fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts: list[int] = []
    original = _upload.MultipartUpload.part

    def counting_part(self: _upload.MultipartUpload, number: int) -> object:
        parts.append(number)
        return original(self, number)

    monkeypatch.setattr(_upload.MultipartUpload, "part", counting_part)
    url = hook.upload(big_file)
    assert sorted(parts) == [1, 2, 3, 4, 5, 6]
    assert url.startswith(fal_emulator_conn.cdn_url) and url.endswith("/clip.mp4")
    fetched = httpx.get(url, timeout=30)
    assert fetched.content == big_file.read_bytes()
    assert fetched.headers["content-type"] == "video/mp4"
    assert fal_emulator_conn.stats()["uploads"] == 1


def test_multipart_upload_of_bytes(hook: FalHook) -> None:
    data = os.urandom(2 * MIB)
    url = hook.upload(data, file_name="blob.bin", content_type="application/x-test")
    fetched = httpx.get(url, timeout=30)
    assert fetched.content == data
    assert fetched.headers["content-type"] == "application/x-test"


async def test_amultipart_upload_round_trips(ahook: FalHook, big_file: Path) -> None:
    url = await ahook.aupload(big_file)
    async with httpx.AsyncClient(timeout=30) as client:
        fetched = await client.get(url)
    assert fetched.content == big_file.read_bytes()
