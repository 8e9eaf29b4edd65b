"""Media downloads (``download_media=True``) go through the hook's transport and never carry the key.

A media URL comes from a model's result, so it is not trusted with the API key, even when it names
one of the connection's own fal origins; the download still gets the hook's retries and errors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fal_provider.exceptions import ResultShapeError
from fal_provider.hooks.fal import FalHook
from fal_provider.results import shape_result

KEY = "media-key-id:media-key-secret"


class MediaServer:
    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.fail_first: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/nope.png":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path in outer.fail_first:
                    outer.fail_first.discard(self.path)
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def media() -> Iterator[MediaServer]:
    server = MediaServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def download(tmp_path: Path, url: str, **kwargs: Any) -> dict[str, Any]:
    return shape_result(
        {"images": [{"url": url}]}, output_path=f"file://{tmp_path}", download_media=True, **kwargs
    )


def test_the_hook_never_sends_the_key_with_a_media_download_even_to_its_own_fal_origin(
    tmp_path: Path, media: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The media server is the connection's CDN origin, where keyed calls are allowed.
    conn = {"conn_type": "fal", "password": KEY, "extra": {"cdn_url": media.url}}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_MEDIA", json.dumps(conn))
    hook = FalHook(fal_conn_id="fal_media")
    assert hook.settings.key == KEY
    manifest = download(tmp_path, f"{media.url}/files/cat.png", fetch=hook.fetch_media)
    assert manifest["media_count"] == 1
    assert Path(manifest["media"][0]["path"].removeprefix("file://")).read_bytes() == b"PNG-/files/cat.png"
    assert media.headers and all("authorization" not in h for h in media.headers)
    assert all(KEY not in json.dumps(h) for h in media.headers)
    assert media.headers[0]["user-agent"].startswith("airflow-provider-fal/")


def test_a_media_download_is_retried_like_any_hook_call(tmp_path: Path, media: MediaServer) -> None:
    media.fail_first.add("/flaky.png")
    manifest = download(tmp_path, f"{media.url}/flaky.png")
    assert Path(manifest["media"][0]["path"].removeprefix("file://")).read_bytes() == b"PNG-/flaky.png"
    assert len(media.headers) == 2, "one 503, then the retry"


def test_a_failed_media_download_names_the_url_and_fals_answer(tmp_path: Path, media: MediaServer) -> None:
    with pytest.raises(
        ResultShapeError, match=r"Cannot download fal media .*/nope\.png at images\.0.*HTTP 404"
    ):
        download(tmp_path, f"{media.url}/nope.png")
    assert len(media.headers) == 1, "a 404 is an answer, not retried"
    assert list(tmp_path.iterdir()) == []
