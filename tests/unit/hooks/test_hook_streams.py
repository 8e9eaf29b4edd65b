"""Status SSE, model /stream events, realtime frames, and the shared async client."""

from __future__ import annotations

import asyncio

import httpx
import msgpack
import pytest

from fal_provider.exceptions import FalNotFoundError, FalServerError, FalStreamError, FalValidationError
from fal_provider.hooks import _transport
from fal_provider.hooks._realtime import FalRealtimeError, decode_frame, encode_message, realtime_url
from fal_provider.hooks.fal import FalHook
from fal_provider.models import AppId
from tests.unit.hooks.hook_fakes import RUN, Script, mock_hook, ok, sse

REF = {"app_id": "fal-ai/flux/dev", "request_id": "r1"}
QUEUED = {"status": "IN_QUEUE", "queue_position": 1}
RUNNING = {"status": "IN_PROGRESS", "logs": [{"message": "step 1"}]}
DONE = {"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 0.1}}


def test_status_stream_yields_until_completed_and_skips_comments() -> None:
    script = Script(sse(QUEUED, RUNNING, DONE, {"status": "IN_PROGRESS", "logs": []}))
    statuses = list(mock_hook(script).iter_status(REF, logs=True))
    assert [s.status for s in statuses] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request = script.requests[0]
    assert request.url.path == "/queue/fal-ai/flux/requests/r1/status/stream"
    assert request.url.params["logs"] == "1"
    assert request.headers["accept"] == "text/event-stream"


def test_status_stream_that_ends_early_raises_stream_error() -> None:
    with pytest.raises(FalStreamError, match="ended before"):
        list(mock_hook(Script(sse(QUEUED, RUNNING))).iter_status(REF))


def test_status_stream_error_answer_is_typed() -> None:
    with pytest.raises(FalNotFoundError):
        list(mock_hook(Script(ok({"detail": "no such request"}, 404))).iter_status(REF))


async def test_async_status_stream(async_transport) -> None:
    async_transport(Script(sse(QUEUED, DONE)))
    statuses = [s async for s in FalHook().aiter_status(REF)]
    assert [s.status for s in statuses] == ["IN_QUEUE", "COMPLETED"]
    async_transport(Script(sse(QUEUED)))
    with pytest.raises(FalStreamError):
        _ = [s async for s in FalHook().aiter_status(REF)]


def test_model_stream_events_decoded_as_json() -> None:
    script = Script(sse({"progress": 1}, {"progress": 2}, {"output": "done"}))
    events = list(mock_hook(script).stream("fal-ai/any-llm", {"prompt": "hi"}))
    assert events == [{"progress": 1}, {"progress": 2}, {"output": "done"}]
    assert str(script.requests[0].url) == f"{RUN}/fal-ai/any-llm/stream"
    assert script.requests[0].headers["accept"] == "text/event-stream"


def test_model_stream_non_json_event_names_the_app() -> None:
    with pytest.raises(FalStreamError, match="fal-ai/any-llm"):
        list(mock_hook(Script(sse({"a": 1}, "not json"))).stream("fal-ai/any-llm", {}))


def test_model_stream_json_error_answer_is_typed() -> None:
    answer = ok({"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]}, 422)
    with pytest.raises(FalValidationError):
        list(mock_hook(Script(answer)).stream("fal-ai/any-llm", {}))
    with pytest.raises(FalStreamError, match="expected an event stream"):
        list(mock_hook(Script(ok({"unexpected": "json"}))).stream("fal-ai/any-llm", {}))


def test_model_stream_broken_mid_way_is_a_stream_error() -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self):
            yield b'data: {"progress": 1}\n\n'
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    script = Script(
        lambda _r: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Broken())
    )
    seen: list[object] = []
    with pytest.raises(FalStreamError, match="mid-stream"):
        for event in mock_hook(script).stream("fal-ai/any-llm", {}):
            seen.append(event)
    assert seen == [{"progress": 1}]


async def test_async_model_stream(async_transport) -> None:
    async_transport(Script(sse({"i": 1}, {"i": 2})))
    assert [e async for e in FalHook().astream("emulator/stream", {"count": 2})] == [{"i": 1}, {"i": 2}]


def test_non_json_result_is_a_server_error() -> None:
    script = Script(httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"}))
    with pytest.raises(FalServerError, match="not JSON"):
        mock_hook(script).get_result(REF)


# -- realtime ----------------------------------------------------------------------------------------
def test_realtime_url_like_fal_client() -> None:
    app = AppId.parse("fal-ai/fast-lcm/sub")
    assert (
        realtime_url("https://fal.run", app, "/realtime", "tok", None)
        == "wss://fal.run/fal-ai/fast-lcm/sub/realtime?fal_jwt_token=tok"
    )
    assert (
        realtime_url("http://127.0.0.1:9/run", AppId.parse("emulator/realtime"), "/realtime", "t", 5)
        == "ws://127.0.0.1:9/run/emulator/realtime/realtime?fal_jwt_token=t&max_buffering=5"
    )
    for bad in (0, 61, True, "5"):
        with pytest.raises(ValueError, match="max_buffering"):
            realtime_url("https://fal.run", app, "/realtime", "t", bad)  # type: ignore[arg-type]


def test_realtime_frames() -> None:
    app = AppId.parse("emulator/realtime")
    assert msgpack.unpackb(encode_message({"b": b"\x00", "n": [1, 2.5]}, app)) == {
        "b": b"\x00",
        "n": [1, 2.5],
    }
    with pytest.raises(ValueError, match=r"message\['when'\] is of type set"):
        encode_message({"when": {1}}, app)
    assert decode_frame(msgpack.packb({"x": 1}, use_bin_type=True), app) == {"x": 1}
    assert decode_frame('{"type": "x-fal-message", "action": "timings"}', app) is None
    assert decode_frame("plain text", app) == {"type": "text", "payload": "plain text"}
    with pytest.raises(FalRealtimeError) as info:
        decode_frame('{"type": "x-fal-error", "error": "TIMEOUT", "reason": "no inputs"}', app)
    assert (info.value.error, info.value.reason) == ("TIMEOUT", "no inputs")
    assert isinstance(info.value, FalStreamError) and "emulator/realtime" in str(info.value)


def test_realtime_validates_before_network() -> None:
    script = Script(ok("token"))
    hook = mock_hook(script)
    with (
        pytest.raises(ValueError, match="max_buffering"),
        hook.realtime("emulator/realtime", max_buffering=100),
    ):
        pass
    with pytest.raises(ValueError, match="owner/app"), hook.realtime("nope"):
        pass
    assert script.calls == 0


# -- shared async client -----------------------------------------------------------------------------
async def test_one_async_client_per_loop_shared_by_hooks() -> None:
    _transport._async_clients.clear()
    first = _transport.shared_async_client()
    assert _transport.shared_async_client() is first
    # Enough short calls in flight for a triggerer's ~1,000 waits (small pools, see the pools section of hooks/_transport.py).
    assert first._transport.capacity >= 100  # type: ignore[attr-defined]
    other_loop_client = await asyncio.to_thread(asyncio.run, _client_in_new_loop())
    assert other_loop_client is not first
    await FalHook.aclose_shared_client()
    assert first.is_closed
    assert _transport.shared_async_client() is not first
    await FalHook.aclose_shared_client()


async def _client_in_new_loop() -> httpx.AsyncClient:
    client = _transport.shared_async_client()
    await client.aclose()
    return client


async def test_many_hooks_on_one_loop_send_through_one_client(async_transport) -> None:
    script = Script(ok({"status": "IN_QUEUE", "queue_position": 0}, 202))
    async_transport(script)
    hooks = [FalHook() for _ in range(20)]
    await asyncio.gather(*(h.aget_status(REF) for h in hooks))
    assert script.calls == 20
    assert len(_transport._async_clients) == 1
    assert all(h._client is None for h in hooks), "async calls never create a per-hook client"


def test_clients_of_closed_loops_are_forgotten() -> None:
    async def leave_client_open() -> None:
        client = _transport.shared_async_client()
        # Like a pooled connection would: the value keeps its (weak) key alive.
        client.__dict__["keeps_loop"] = asyncio.get_running_loop()

    _transport._async_clients.clear()
    for _ in range(3):
        asyncio.run(leave_client_open())
    assert len(_transport._async_clients) <= 1, "each new loop drops the clients of closed loops"
    _transport._async_clients.clear()


def test_a_session_closed_with_4404_is_the_same_permanent_not_found_as_the_frame() -> None:
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    from fal_provider.hooks._realtime import closed_error

    app = AppId.parse("fal-ai/flux/schnell")
    gone = closed_error(ConnectionClosedError(Close(4404, "No realtime endpoint"), None), app)
    assert isinstance(gone, FalNotFoundError) and "fal-ai/flux/schnell has no realtime endpoint" in str(gone)
    dropped = closed_error(ConnectionClosedError(Close(1006, ""), None), app)
    assert type(dropped) is FalStreamError
