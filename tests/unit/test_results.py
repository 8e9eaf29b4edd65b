"""The XCom result rules: select, output_path, download_media, size limit."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from fal_provider._compat import AirflowFailException
from fal_provider.exceptions import FalInputError
from fal_provider.results import (
    ResultShapeError,
    fetch_limit,
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


@pytest.mark.parametrize(
    ("select", "dotted"),
    [("images[0].url", "images.0.url"), ("images[1]", "images.1"), ("data['seed']", "data.seed")],
)
def test_select_with_brackets_shows_the_dotted_path(select: str, dotted: str) -> None:
    with pytest.raises(ResultShapeError) as err:
        select_fields(RESULT, select)
    assert f"write {dotted!r}" in str(err.value)
    assert isinstance(err.value, FalInputError)  # a ValueError that spends no retries


def test_select_with_empty_segments_is_a_syntax_error() -> None:
    for path in ("images..url", ".seed", "seed."):
        with pytest.raises(FalInputError, match="empty segment"):
            select_fields(RESULT, [path])


def test_fetch_limit_only_when_the_whole_result_goes_to_xcom() -> None:
    assert fetch_limit(None, None, 1000) == 1000
    assert fetch_limit("seed", None, 1000) is None  # the whole result is read, only a field is kept
    assert fetch_limit(None, "file:///tmp/x/", 1000) is None  # written to storage whole
    assert fetch_limit(None, None, 0) is None and fetch_limit(None, None, None) is None


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
    result: dict[str, Any] = {
        "images": [{"url": f"{media_server}/files/cat.png"}, {"url": inline}],
        "seed": 1,
    }
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


# --------------------------------------------------------------------------- all-or-nothing output


def files_under(root: Path) -> list[str]:
    """Every file and folder below ``root`` (hidden temporaries included), relative, sorted."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_failed_download_leaves_nothing_behind(tmp_path: Path, media_server: str) -> None:
    (tmp_path / "earlier.json").write_text("{}")  # someone else's output in the same folder
    result = {"images": [{"url": f"{media_server}/ok.png"}, {"url": f"{media_server}/missing.png"}]}
    with pytest.raises(ResultShapeError, match=r"missing\.png at images\.1"):
        shape_result(result, output_path=f"file://{tmp_path}", download_media=True, request_id="rid")
    # the first image had been downloaded and written; it, its folder and any temporary are gone
    assert files_under(tmp_path) == ["earlier.json"]


def test_failed_write_midway_leaves_no_partial_file(
    tmp_path: Path, media_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    calls: list[int] = []

    def disk_full_on_second_file(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_second_file)
    result = {"images": [{"url": f"{media_server}/a.png"}, {"url": f"{media_server}/b.png"}]}
    with pytest.raises(ResultShapeError, match=r"Cannot write .*001_b.png: OSError"):
        shape_result(result, output_path=f"file://{tmp_path}/out", download_media=True, request_id="rid")
    assert files_under(tmp_path) == []  # not even the folder this call created


def test_failed_result_publish_removes_the_media_it_published(
    tmp_path: Path, media_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def json_rename_fails(src: str, dst: str) -> None:
        if dst.endswith(".json"):
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", json_rename_fails)
    result = {"images": [{"url": f"{media_server}/a.png"}]}
    with pytest.raises(ResultShapeError, match=r"Cannot write .*rid.json: PermissionError"):
        shape_result(result, output_path=f"file://{tmp_path}", download_media=True, request_id="rid")
    assert files_under(tmp_path) == []


def test_result_json_is_published_last_after_every_media_file(
    tmp_path: Path, media_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    published: list[str] = []

    def watch(src: str, dst: str) -> None:
        assert Path(src).parent == Path(dst).parent and Path(src).name.startswith(".")  # same-folder temp
        if dst.endswith(".json"):
            assert all(Path(done).read_bytes() for done in published), "JSON before its media"
            assert not Path(dst).exists()
        published.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    result = {"images": [{"url": f"{media_server}/a.png"}, {"url": f"{media_server}/b.png"}]}
    shape_result(result, output_path=f"file://{tmp_path}", download_media=True, request_id="rid")
    assert [Path(p).name for p in published] == ["000_a.png", "001_b.png", "rid.json"]
    assert files_under(tmp_path) == ["rid.json", "rid_media", "rid_media/000_a.png", "rid_media/001_b.png"]


def test_rewriting_an_existing_result_replaces_it_whole(tmp_path: Path) -> None:
    shape_result({"v": 1}, output_path=f"file://{tmp_path}/out.json")
    shape_result({"v": 2}, output_path=f"file://{tmp_path}/out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == {"v": 2}
    assert files_under(tmp_path) == ["out.json"]


class _Memory(MemoryFileSystem):
    """An object store without a local path: its own in-memory contents, isolated per test."""

    store: dict[str, Any] = {}
    pseudo_dirs: list[str] = [""]
    moves = 0

    def mv(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        type(self).moves += 1
        super().mv(path1, path2, **kwargs)


class _MemoryWithoutMove(_Memory):
    def mv(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        raise NotImplementedError


@pytest.fixture(params=[_Memory, _MemoryWithoutMove], ids=["mv", "no-mv"])
def memory_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[_Memory]:
    from airflow.sdk.io import store

    fs_class: type[_Memory] = request.param
    monkeypatch.setattr(fs_class, "store", {})
    monkeypatch.setattr(fs_class, "pseudo_dirs", [""])
    monkeypatch.setattr(fs_class, "moves", 0)
    fs_class.clear_instance_cache()
    monkeypatch.setitem(
        store._STORE_CACHE, "memory-conn", store.ObjectStore(protocol="memory", conn_id="conn", fs=fs_class())
    )
    return fs_class


def test_object_store_output_is_all_or_nothing(memory_store: type[_Memory], media_server: str) -> None:
    result = {"images": [{"url": f"{media_server}/a.png"}]}
    manifest = shape_result(
        result, output_path="memory://conn@bucket/run", download_media=True, request_id="rid"
    )
    assert sorted(memory_store.store) == ["/bucket/run/rid.json", "/bucket/run/rid_media/000_a.png"]
    assert memory_store.moves == (2 if memory_store is _Memory else 0)
    assert (
        json.loads(memory_store.store["/bucket/run/rid.json"].getvalue())["images"][0]["url"]
        == (manifest["media"][0]["path"])
    )

    memory_store.store.clear()
    failing = {"images": [{"url": f"{media_server}/a.png"}, {"url": f"{media_server}/missing.png"}]}
    with pytest.raises(ResultShapeError, match=r"missing\.png"):
        shape_result(failing, output_path="memory://conn@bucket/run", download_media=True, request_id="rid")
    assert memory_store.store == {}
