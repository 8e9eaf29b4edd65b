"""FalHook.upload / aupload: single POST up to the threshold, fal's multipart flow above it.

The module constants are lowered so a few KiB exercise several parts; a scripted transport stands in
for the CDN and records every call.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
import pytest

from fal_provider.exceptions import FalAuthError, FalServerError
from fal_provider.hooks import _upload
from fal_provider.hooks._upload import UploadSource
from tests.unit.hooks.hook_fakes import CDN, KEY, REST, Script, mock_hook, ok

PART = 1024
TOKEN = {
    "token": "cdn-tok",
    "token_type": "Bearer",
    "base_url": CDN,
    "expires_at": "2999-01-01T00:00:00+00:00",
}
FILE_URL = f"{CDN}/files/f1/big.bin"
PART_URL = re.compile(rf"{re.escape(FILE_URL)}/multipart/up-1/(\d+)$")


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_upload, "MULTIPART_THRESHOLD", 4 * PART)
    monkeypatch.setattr(_upload, "MULTIPART_PART_SIZE", PART)


def etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


class FakeCdn:
    """Answers the token, multipart and single-upload calls; ``fail_part`` scripts part answers."""

    def __init__(self, *, fail_part: dict[int, list[httpx.Response]] | None = None, etags: bool = True):
        self.parts: dict[int, bytes] = {}
        self.fail_part = fail_part or {}
        self.etags = etags

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url.startswith(f"{REST}/storage/auth/token"):
            return ok(TOKEN)
        if url == f"{CDN}/files/upload/multipart":
            return ok({"access_url": FILE_URL, "uploadId": "up-1"})
        if url == f"{CDN}/files/upload":
            return ok({"access_url": f"{CDN}/files/single/{request.headers.get('x-fal-file-name')}"})
        if url == f"{FILE_URL}/multipart/up-1/complete":
            return ok({"access_url": FILE_URL})
        match = PART_URL.match(url)
        assert match, f"unexpected call {request.method} {url}"
        number = int(match.group(1))
        if self.fail_part.get(number):
            return self.fail_part[number].pop(0)
        self.parts[number] = request.content
        return httpx.Response(200, headers={"ETag": etag(request.content)} if self.etags else None)

    def joined(self) -> bytes:
        return b"".join(self.parts[n] for n in sorted(self.parts))


def big_file(tmp_path: Path, size: int = 4 * PART + 300) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(i % 251 for i in range(size)))
    return path


def check_multipart_calls(script: Script, path: Path) -> None:
    urls = [f"{r.method} {r.url}" for r in script.requests]
    assert urls[0] == f"POST {REST}/storage/auth/token?storage_type=fal-cdn-v3"
    assert urls[1] == f"POST {CDN}/files/upload/multipart"
    assert sorted(urls[2:-1]) == [f"PUT {FILE_URL}/multipart/up-1/{n}" for n in range(1, 6)]
    assert urls[-1] == f"POST {FILE_URL}/multipart/up-1/complete"
    create = script.requests[1]
    assert create.headers["x-fal-file-name"] == "big.bin"
    assert create.headers["authorization"] == "Bearer cdn-tok"
    data = path.read_bytes()
    expected = [{"partNumber": n, "etag": etag(data[(n - 1) * PART : n * PART])} for n in range(1, 6)]
    assert script.body() == {"parts": expected}
    for request in script.requests[1:]:
        assert KEY not in json.dumps(dict(request.headers)), "CDN calls carry the storage token only"


def test_multipart_above_threshold_reassembles_the_file(tmp_path: Path) -> None:
    path = big_file(tmp_path)
    cdn = FakeCdn()
    script = Script(cdn)
    assert mock_hook(script).upload(path) == FILE_URL
    assert cdn.joined() == path.read_bytes()
    check_multipart_calls(script, path)


async def test_async_multipart_above_threshold_reassembles_the_file(tmp_path: Path, async_transport) -> None:
    path = big_file(tmp_path)
    cdn = FakeCdn()
    script = Script(cdn)
    async_transport(script)
    assert await mock_hook(Script(ok())).aupload(path) == FILE_URL
    assert cdn.joined() == path.read_bytes()
    check_multipart_calls(script, path)


def test_threshold_is_inclusive_for_single_upload(tmp_path: Path) -> None:
    cdn = FakeCdn()
    script = Script(cdn)
    hook = mock_hook(script)
    assert hook.upload(b"x" * 4 * PART, file_name="edge.bin") == f"{CDN}/files/single/edge.bin"
    assert hook.upload(b"x" * (4 * PART + 1), file_name="big.bin") == FILE_URL
    assert [str(r.url) for r in script.requests[:3]] == [
        f"{REST}/storage/auth/token?storage_type=fal-cdn-v3",
        f"{CDN}/files/upload",
        f"{CDN}/files/upload/multipart",
    ]
    assert len(cdn.parts) == 5


def test_file_is_read_one_part_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int | None] = []
    original = UploadSource.read

    def recording_read(self: UploadSource, offset: int = 0, length: int | None = None) -> bytes:
        reads.append(length)
        return original(self, offset, length)

    monkeypatch.setattr(UploadSource, "read", recording_read)
    path = big_file(tmp_path)
    mock_hook(Script(FakeCdn())).upload(path)
    assert reads == [PART] * 5, "never the whole file at once"


def test_failed_part_is_retried_like_other_puts(tmp_path: Path, waits: list[float]) -> None:
    ingress = httpx.Response(503, text="<html>503</html>")
    cdn = FakeCdn(fail_part={3: [ingress, ingress]})
    script = Script(cdn)
    path = big_file(tmp_path)
    assert mock_hook(script).upload(path) == FILE_URL
    assert cdn.joined() == path.read_bytes()
    assert sum(str(r.url).endswith("/up-1/3") for r in script.requests) == 3
    assert len(waits) == 2


async def test_async_failed_part_is_retried(tmp_path: Path, waits: list[float], async_transport) -> None:
    cdn = FakeCdn()
    attempts: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if str(request.url).endswith("/up-1/2") and not attempts:
            attempts.append(1)
            raise httpx.ReadError("connection reset")
        return cdn(request)

    async_transport(Script(flaky))
    path = big_file(tmp_path)
    assert await mock_hook(Script(ok())).aupload(path) == FILE_URL
    assert cdn.joined() == path.read_bytes()
    assert attempts == [1] and len(waits) == 1, "the dropped part was sent again"


def test_permanent_part_error_fails_without_completing(tmp_path: Path) -> None:
    cdn = FakeCdn(fail_part={2: [httpx.Response(403, json={"detail": "Invalid or expired CDN token"})]})
    script = Script(cdn)
    with pytest.raises(FalAuthError):
        mock_hook(script).upload(big_file(tmp_path))
    assert not any(str(r.url).endswith("/complete") for r in script.requests)


async def test_async_missing_etag_is_a_server_error(tmp_path: Path, async_transport) -> None:
    script = Script(FakeCdn(etags=False))
    async_transport(script)
    with pytest.raises(FalServerError, match="ETag"):
        await mock_hook(Script(ok())).aupload(big_file(tmp_path))
    assert not any(str(r.url).endswith("/complete") for r in script.requests)


def test_bytes_above_threshold_go_multipart_too() -> None:
    data = bytes(range(256)) * 20
    cdn = FakeCdn()
    assert mock_hook(Script(cdn)).upload(data, file_name="big.bin") == FILE_URL
    assert cdn.joined() == data
