"""The XCom result rules: select, output_path, download_media, size limit."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.results import (
    ResultShapeError,
    iter_media,
    resolve_path,
    select_fields,
    shape_result,
)

RESULT = {
    "images": [
        {"url": "http://cdn/a.png", "width": 4, "height": 4, "content_type": "image/png"},
        {"url": "http://cdn/b.png", "file_name": "b.png"},
    ],
    "seed": 42,
    "prompt": "a cat",
}


def test_default_returns_result_unchanged() -> None:
    assert shape_result(RESULT) == RESULT


def test_select_single_path_and_list() -> None:
    assert shape_result(RESULT, select="images.1.url") == "http://cdn/b.png"
    assert shape_result(RESULT, select=["seed", "images.0.width"]) == {"seed": 42, "images.0.width": 4}


def test_select_missing_field_names_path_and_existing_keys() -> None:
    with pytest.raises(ResultShapeError) as err:
        resolve_path(RESULT, "images.0.uri")
    message = str(err.value)
    assert "'images.0.uri'" in message and "'uri'" in message
    assert "content_type, height, url, width" in message
    assert isinstance(err.value, AirflowFailException)  # same config fails again: no retry


def test_select_bad_index_and_scalar() -> None:
    with pytest.raises(ResultShapeError, match=r"list of 2 item\(s\) \(use 0..1\)"):
        select_fields(RESULT, "images.5")
    with pytest.raises(ResultShapeError, match="seed is a int"):
        select_fields(RESULT, "seed.x")
    with pytest.raises(ResultShapeError, match="non-empty"):
        select_fields(RESULT, [])


def test_size_limit_names_the_fixes() -> None:
    big = {"text": "x" * 5000}
    with pytest.raises(ResultShapeError) as err:
        shape_result(big, max_xcom_bytes=1000)
    assert "select=" in str(err.value) and "output_path=" in str(err.value)
    assert shape_result(big, max_xcom_bytes=0) == big  # 0 disables the limit
    assert shape_result(big, select="text", max_xcom_bytes=10_000) == "x" * 5000


def test_iter_media_finds_nested_file_objects() -> None:
    found = [path for path, _ in iter_media({"a": {"video": {"url": "https://v/x.mp4"}}, **RESULT})]
    assert found == ["a.video", "images.0", "images.1"]


def test_output_path_writes_result_and_returns_manifest(tmp_path: Path) -> None:
    manifest = shape_result(RESULT, output_path=f"file://{tmp_path}/run1", request_id="req-9")
    written = tmp_path / "run1" / "req-9.json"
    assert json.loads(written.read_text()) == RESULT
    assert manifest["result_path"] == f"file://{written}"
    assert manifest["result_bytes"] == written.stat().st_size
    assert manifest["media_count"] == 2 and manifest["media_downloaded"] is False
    assert manifest["request_id"] == "req-9"


def test_output_path_json_file_and_select(tmp_path: Path) -> None:
    manifest = shape_result(RESULT, output_path=f"file://{tmp_path}/out.json", select="seed")
    assert (tmp_path / "out.json").exists()
    assert manifest["selected"] == 42


@pytest.fixture
def media_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/missing.png":
                self.send_response(404)
                self.end_headers()
                return
            body = b"PNG-" + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_media_copies_files_and_rewrites_urls(tmp_path: Path, media_server: str) -> None:
    inline = "data:image/png;base64," + base64.b64encode(b"inline-bytes").decode()
    result = {"images": [{"url": f"{media_server}/files/cat.png"}, {"url": inline}], "seed": 1}
    manifest = shape_result(
        result,
        output_path=f"file://{tmp_path}",
        download_media=True,
        request_id="rid",
        select="images.0.url",
    )
    assert manifest["media_count"] == 2
    first, second = manifest["media"]
    assert Path(first["path"].removeprefix("file://")).read_bytes() == b"PNG-/files/cat.png"
    assert Path(second["path"].removeprefix("file://")).read_bytes() == b"inline-bytes"
    assert manifest["media_bytes"] == len(b"PNG-/files/cat.png") + len(b"inline-bytes")
    saved = json.loads((tmp_path / "rid.json").read_text())
    assert saved["images"][0]["url"] == first["path"]
    assert saved["images"][0]["fal_url"] == f"{media_server}/files/cat.png"
    assert manifest["selected"] == first["path"]  # selected values point at the copies
    assert result["images"][0]["url"].startswith("http")  # the caller's object is not mutated


def test_download_failure_is_clear(tmp_path: Path, media_server: str) -> None:
    with pytest.raises(ResultShapeError, match=r"Cannot download fal media .*missing.png at images.0"):
        shape_result(
            {"images": [{"url": f"{media_server}/missing.png"}]},
            output_path=f"file://{tmp_path}",
            download_media=True,
        )


def test_unwritable_output_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ResultShapeError, match=r"Cannot write .*writable location"):
        shape_result(RESULT, output_path=f"file://{blocker}/sub")


def test_download_media_without_output_path() -> None:
    with pytest.raises(ResultShapeError, match="needs output_path"):
        shape_result(RESULT, download_media=True)
