"""The API key goes only to the connection's fal origins, whatever URLs a request reference carries.

A reference can come from ``dag_run.conf``, an XCom or a user's dict. Here its URLs point at a second
local HTTP server (another port on the same host: a different origin) that records every request and
its ``Authorization`` header; the hook must never contact it, and must still reach the request on
the emulator through the URLs it rebuilds from app id and request id. Also: app ids and paths that
would walk to another endpoint or smuggle a query are refused before anything reaches the emulator.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalInputError
from fal_provider.hooks._transport import IDEMPOTENT, Call, default_timeout, send
from fal_provider.hooks.fal import FalHook
from fal_provider.models import CompletedStatus


class Recorder:
    """A real HTTP server that answers everything like a completed fal request and remembers it."""

    def __init__(self, redirect_to: str | None = None) -> None:
        """``redirect_to``: answer every request with a 307 to that base URL instead."""
        self.seen: list[tuple[str, str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.seen.append((self.command, self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if redirect_to:
                    self.send_response(307)
                    self.send_header("Location", f"{redirect_to}/steal")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"status": "COMPLETED", "logs": None, "stolen": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def serving(rec: Recorder) -> Iterator[Recorder]:
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()
        rec.thread.join(timeout=10)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with serving(Recorder()) as rec:
        yield rec


def foreign(ref: Any, recorder: Recorder) -> dict[str, Any]:
    """The reference as an attacker would hand it over: same ids, URLs on the recorder."""
    return {
        **ref.to_xcom(),
        "status_url": f"{recorder.url}/steal/status",
        "response_url": f"{recorder.url}/steal/result",
        "cancel_url": f"{recorder.url}/steal/cancel",
    }


def test_foreign_reference_urls_are_rebuilt_and_never_get_the_key_sync(
    hook: FalHook, fal_emulator_conn: FalEmulator, recorder: Recorder
) -> None:
    ref = foreign(hook.submit("emulator/echo", {"prompt": "cat"}), recorder)
    statuses = list(hook.iter_status(ref))
    assert isinstance(statuses[-1], CompletedStatus)
    assert isinstance(hook.get_status(ref), CompletedStatus)
    assert hook.get_result(ref) == {"prompt": "cat"}
    assert hook.cancel(ref) == "ALREADY_COMPLETED"
    assert recorder.seen == []
    assert fal_emulator_conn.stats()["result_calls"] == 1


async def test_foreign_reference_urls_are_rebuilt_and_never_get_the_key_async(
    ahook: FalHook, fal_emulator_conn: FalEmulator, recorder: Recorder
) -> None:
    ref = foreign(await ahook.asubmit("emulator/echo", {"prompt": "dog"}), recorder)
    statuses = [status async for status in ahook.aiter_status(ref)]
    assert isinstance(statuses[-1], CompletedStatus)
    assert isinstance(await ahook.aget_status(ref), CompletedStatus)
    assert await ahook.aget_result(ref) == {"prompt": "dog"}
    assert await ahook.acancel(ref) == "ALREADY_COMPLETED"
    assert recorder.seen == []


def test_the_transport_refuses_a_keyed_call_to_another_origin(
    hook: FalHook, fal_emulator_conn: FalEmulator, recorder: Recorder
) -> None:
    """The lowest layer: any keyed Call, however it was built, is checked before it is sent."""
    call = Call(
        method="GET",
        url=f"{recorder.url}/anything",
        label="a call someone forgot to check",
        policy=IDEMPOTENT,
        headers={"Accept": "application/json"},
        timeout=default_timeout(hook.settings),
    )
    with (
        httpx.Client() as client,
        pytest.raises(FalInputError, match="refusing to send the fal API key") as err,
    ):
        send(client, call, hook.settings, hook.log)
    assert hook.settings.key not in str(err.value)
    assert recorder.seen == []


def test_an_unkeyed_call_to_another_origin_goes_without_the_key(
    hook: FalHook, fal_emulator_conn: FalEmulator, recorder: Recorder
) -> None:
    """What CDN part uploads to a storage-provided URL use: sent, but never with the key."""
    call = Call(
        method="PUT",
        url=f"{recorder.url}/multipart/u/1",
        label="part upload",
        policy=IDEMPOTENT,
        headers={"Authorization": "Bearer cdn-token"},
        timeout=default_timeout(hook.settings),
        content=b"part",
        with_key=False,
    )
    with httpx.Client() as client:
        send(client, call, hook.settings, hook.log)
    assert recorder.seen == [("PUT", "/multipart/u/1", "Bearer cdn-token")]


@pytest.mark.parametrize(
    ("app_id", "path"),
    [
        ("../../rest/tokens", ""),  # today: POSTs the arguments to the realtime token endpoint
        ("a/b?fal_webhook=http://127.0.0.1:9/steal", ""),  # today: adds a webhook receiving the output
        ("emulator/echo", "../../../rest/tokens"),
        ("emulator/echo", "?fal_webhook=http://127.0.0.1:9/steal"),
        ("emulator/echo#x", ""),
        ("emulator/%2e%2e/echo", ""),
    ],
)
def test_app_ids_and_paths_that_leave_the_endpoint_fail_before_any_call(
    hook: FalHook, fal_emulator_conn: FalEmulator, app_id: str, path: str
) -> None:
    with pytest.raises(FalInputError, match="Invalid"):
        hook.submit(app_id, {"allowed_apps": ["echo"], "token_expiration": 60}, path=path)
    with pytest.raises(FalInputError, match="Invalid"):
        hook.run(app_id, {"x": 1}, path=path)
    stats = fal_emulator_conn.stats()
    assert (stats["submits_total"], stats["runs"], stats["tokens"]) == (0, 0, 0)


async def test_async_app_ids_that_leave_the_endpoint_fail_before_any_call(
    ahook: FalHook, fal_emulator_conn: FalEmulator
) -> None:
    with pytest.raises(FalInputError):
        await ahook.asubmit("../../rest/tokens", {"allowed_apps": ["echo"], "token_expiration": 60})
    with pytest.raises(FalInputError):
        await ahook.aget_status({"app_id": "emulator/echo", "request_id": "../../../rest/tokens"})
    stats = fal_emulator_conn.stats()
    assert (stats["submits_total"], stats["tokens"], stats["status_calls"]["total"]) == (0, 0, 0)


def test_a_redirect_from_a_fal_origin_to_another_host_drops_the_key(
    fal_emulator_conn: FalEmulator, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redirects are followed (httpx), and the key does not follow one off the origin."""
    with serving(Recorder(redirect_to=recorder.url)) as redirector:
        conn = json.loads(fal_emulator_conn.connection_json())
        conn["extra"]["run_url"] = f"{redirector.url}/run"
        monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(conn))
        hook = FalHook()
        try:
            assert hook.run("emulator/echo", {"a": 1})["stolen"] is True
        finally:
            hook.close()
    assert [auth for _, _, auth in redirector.seen] == [f"Key {fal_emulator_conn.key}"]
    assert recorder.seen == [("POST", "/steal", None)]
