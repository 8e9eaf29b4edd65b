"""Status SSE stream, sync run, and /stream SSE including deliberately broken streams."""

from __future__ import annotations

import json

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from tests.integration.emulator.helpers import submit


def read_sse(client: httpx.Client, method: str, url: str, **kwargs: object) -> tuple[list[dict], list[str]]:
    events: list[dict] = []
    comments: list[str] = []
    with client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            elif line.startswith(":"):
                comments.append(line)
    return events, comments


def test_status_stream_sends_changes_pings_and_closes(client: httpx.Client, emu: FalEmulator):
    emu.configure(concurrency=1, ping_interval_s=0.1)
    submit(client, "emulator/echo", {"duration_s": 1.0})
    sub = submit(client, "emulator/echo", {"duration_s": 0.6, "log_lines": 2})
    events, comments = read_sse(client, "GET", sub["status_url"] + "/stream", params={"logs": "1"})
    statuses = [event["status"] for event in events]
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "COMPLETED"
    assert "IN_PROGRESS" in statuses
    assert ": ping" in comments
    streamed_logs = [log["message"] for event in events for log in (event["logs"] or [])]
    assert streamed_logs == ["log line 1 of 2", "log line 2 of 2"]  # deltas, each log once
    assert events[-1]["metrics"]["inference_time"] > 0
    assert emu.stats()["status_stream_calls"] == 1


def test_status_stream_of_completed_request_sends_one_event(client: httpx.Client):
    sub = submit(client, "emulator/echo", {})
    client.get(sub["status_url"])
    events, _ = read_sse(client, "GET", sub["status_url"] + "/stream")
    assert events[-1]["status"] == "COMPLETED"


def test_run_returns_model_output_and_errors_directly(client: httpx.Client, emu: FalEmulator):
    assert client.post("/run/emulator/echo", json={"q": 1}).json() == {"q": 1}
    failed = client.post("/run/emulator/fail", json={"kind": "validation"})
    assert failed.status_code == 422 and failed.headers["x-fal-retryable"] == "false"
    assert client.post("/run/emulator/fail", json={"kind": "server"}).status_code == 500
    assert emu.stats()["runs"] == 3


def test_stream_events_then_close(client: httpx.Client):
    events, _ = read_sse(client, "POST", "/run/emulator/stream/stream", json={"count": 4})
    assert [e.get("progress") for e in events[:4]] == [1, 2, 3, 4]
    assert events[-1] == {"done": True, "count": 4, "output": "streamed 4 events"}


def test_stream_error_event_and_idle(client: httpx.Client):
    events, _ = read_sse(client, "POST", "/run/emulator/stream/stream", json={"count": 4, "error_at": 2})
    assert events == [
        {"progress": 1, "count": 4},
        {"error": "Emulated stream error at event 2", "error_type": "stream_error"},
    ]
    events, _ = read_sse(client, "POST", "/run/emulator/stream/stream", json={"count": 1, "idle_s": 0.3})
    assert events[-1]["done"] is True


def test_stream_break_after_drops_connection(client: httpx.Client):
    received: list[str] = []
    body = {"count": 5, "break_after": 2}
    with (
        pytest.raises(httpx.TransportError),
        client.stream("POST", "/run/emulator/stream/stream", json=body) as response,
    ):
        received.extend(response.iter_lines())
    assert any('"progress": 2' in line for line in received)
    assert not any('"done"' in line for line in received)


def test_stream_on_app_without_stream_endpoint_is_404(client: httpx.Client):
    response = client.post("/run/emulator/echo/stream", json={})
    assert response.status_code == 404
    assert "detail" in response.json()


def test_stream_bad_input_is_plain_422(client: httpx.Client):
    response = client.post("/run/fal-ai/any-llm/stream", json={})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "prompt"]
