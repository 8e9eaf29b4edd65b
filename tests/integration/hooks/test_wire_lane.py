"""The lean HTTP/1.1 lanes of the hook (async and blocking): same answers, errors and retries as
httpx, over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalConnectionError, FalTimeoutError
from fal_provider.hooks import _transport
from fal_provider.hooks.fal import FalHook
from fal_provider.models import CompletedStatus, InProgressStatus

Handler = Callable[[int, bytes], Any]


async def test_status_polls_go_through_the_lane_and_match_the_sync_hook(
    fal_emulator_conn: FalEmulator, ahook: FalHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    original = _transport.WireLane.get

    async def spy(self: _transport.WireLane, url: str, *args: Any) -> httpx.Response | None:
        response = await original(self, url, *args)
        sent.append(url if response is not None else "fallback")
        return response

    monkeypatch.setattr(_transport.WireLane, "get", spy)
    ref = await ahook.asubmit("emulator/echo", {"duration_s": 30})
    statuses = [await ahook.aget_status(ref) for _ in range(3)]
    assert sent == [ref.status_url] * 3
    assert all(isinstance(s, InProgressStatus) for s in statuses)
    sync = FalHook()
    assert sync.get_status(ref).model_dump() == statuses[-1].model_dump()
    sync.close()
    assert fal_emulator_conn.stats()["status_calls"]["by_request"][ref.request_id] == 4
    await ahook.acancel(ref)


async def test_with_an_environment_proxy_the_lane_steps_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    _transport._async_clients.clear()
    client = _transport.shared_async_client()
    assert _transport._wire_of(client) is None
    await _transport.close_shared_async_client()


def test_sync_status_and_result_go_through_the_blocking_lane(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    original = _transport.BlockingLane.get

    def spy(self: _transport.BlockingLane, url: str, *args: Any) -> httpx.Response | None:
        response = original(self, url, *args)
        sent.append(url if response is not None else "fallback")
        return response

    monkeypatch.setattr(_transport.BlockingLane, "get", spy)
    hook = FalHook()
    ref = hook.submit("emulator/echo", {"i": 7})  # a POST: httpx's
    while not isinstance(hook.get_status(ref), CompletedStatus):
        pass
    assert hook.get_result(ref)["i"] == 7
    assert hook.get_result(ref, max_bytes=10_000)["i"] == 7  # read as it streams in: httpx's
    assert sent and set(sent) == {ref.status_url, ref.response_url}
    assert sent[-1] == ref.response_url and sent.count(ref.response_url) == 1
    lane = hook._http.lane  # type: ignore[attr-defined]
    assert sum(len(idle) for idle in lane._idle.values()) == 1  # one kept-alive connection did it all
    hook.close()
    assert lane.closed and not lane._idle


def test_with_an_environment_proxy_the_sync_client_has_no_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    with _transport.new_sync_client() as client:
        assert isinstance(client, _transport.LaneClient) and client.lane is None


def test_only_plain_urls_and_parameters_take_the_lane() -> None:
    assert _transport.plain_target("https://queue.fal.run/a/b/requests/1/status") == (
        "https", "queue.fal.run", 443, "queue.fal.run", "/a/b/requests/1/status",
    )  # fmt: skip
    assert _transport.plain_target("http://h:8080/x")[2:4] == (8080, "h:8080")  # type: ignore[index]
    for url in ("https://u:p@h/x", "https://h/x?a=1", "https://h/x#f", "ftp://h/x", "https://:0/x"):
        assert _transport.plain_target(url) is None, url
    # The path goes on the wire exactly as httpx would send it (percent-encoded).
    assert _transport.plain_target("https://h/ü")[4] == httpx.URL("https://h/ü").raw_path.decode()  # type: ignore[index]
    assert _transport._query({"logs": "0"}) == "?logs=0"
    assert _transport._query({"q": "a b"}) is None


# -- a scripted server, for what the emulator does not do ------------------------------------------
class ScriptedServer:
    """Answers each request with ``handler(index, raw request)``: bytes; ``(bytes,)`` answers and
    closes; a float waits that long and closes; ``None`` closes the socket."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(raw)
                answer = self.handler(len(self.requests) - 1, raw)
                if answer is None:
                    break
                if isinstance(answer, float):
                    await asyncio.sleep(answer)
                    break
                if isinstance(answer, tuple):  # (bytes,): answer, then close the connection
                    writer.write(answer[0])
                    await writer.drain()
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(status: int, body: Any, **headers: str) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} X", f"content-length: {len(data)}", "content-type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


RUNNING = {"status": "IN_PROGRESS", "request_id": "r1"}
Poll = Callable[[FalHook, dict[str, str]], Awaitable[Any]]


@pytest.fixture(params=["async", "sync"])
def poll(request: pytest.FixtureRequest) -> Poll:
    """One status call through the async hook's lane, or the sync hook's (in a thread: the scripted
    server answers on this test's loop)."""
    if request.param == "async":
        return lambda hook, ref: hook.aget_status(ref)
    return lambda hook, ref: asyncio.to_thread(hook.get_status, ref)


@pytest.fixture
async def scripted(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[[Handler], Any]]:
    servers: list[asyncio.Server] = []
    hooks: list[FalHook] = []

    async def start(handler: Handler) -> tuple[ScriptedServer, FalHook, dict[str, str]]:
        script = ScriptedServer(handler)
        server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
        servers.append(server)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        conn = {
            "conn_type": "fal",
            "password": "id:secret",
            "host": f"{base}/queue",
            "extra": {"run_url": f"{base}/run", "rest_url": f"{base}/rest", "cdn_url": f"{base}/cdn",
                      "retry_limit": 3, "retry_min_wait": 0.01, "retry_max_wait": 0.05, "timeout": 1},
        }  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(conn))
        ref = {"app_id": "a/b", "request_id": "r1", "status_url": f"{base}/queue/a/b/requests/r1/status",
               "response_url": f"{base}/queue/a/b/requests/r1", "cancel_url": f"{base}/queue/a/b/requests/r1/cancel"}  # fmt: skip
        hooks.append(FalHook())
        return script, hooks[-1], ref

    yield start
    await FalHook.aclose_shared_client()
    for hook in hooks:
        hook.close()
    for server in servers:
        server.close()


async def test_keeps_the_connection_alive_and_sends_the_key_once_per_request(
    scripted: Any, poll: Poll
) -> None:
    script, hook, ref = await scripted(lambda i, raw: answer(202, RUNNING))
    for _ in range(3):
        assert isinstance(await poll(hook, ref), InProgressStatus)
    assert script.connections == 1 and len(script.requests) == 3
    first = script.requests[0].decode()
    assert first.startswith("GET /queue/a/b/requests/r1/status?logs=0 HTTP/1.1\r\n")
    assert first.count("Authorization: Key id:secret") == 1 and "User-Agent: airflow-provider-fal/" in first


async def test_a_connection_the_server_closed_is_replaced_without_a_retry(scripted: Any, poll: Poll) -> None:
    # The server answers, then closes the socket while it idles in the pool; the next poll may find
    # it closed (noticed) or write into it just before the close (retried once on a fresh one).
    script, hook, ref = await scripted(lambda i, raw: answer(202, RUNNING) if i % 2 == 0 else None)
    await poll(hook, ref)
    await poll(hook, ref)
    assert isinstance(await poll(hook, ref), InProgressStatus)
    assert script.connections >= 2


async def test_retry_after_and_retryable_answers_behave_as_on_httpx(
    scripted: Any, poll: Poll, waits: list[float]
) -> None:
    replies = [answer(429, {"detail": "slow down"}, retry_after="0.02"), answer(202, RUNNING)]
    script, hook, ref = await scripted(lambda i, raw: replies[min(i, 1)])
    assert isinstance(await poll(hook, ref), InProgressStatus)
    assert waits == [0.02] and len(script.requests) == 2


async def test_a_silent_server_is_a_read_timeout_retried_then_a_fal_timeout_error(
    scripted: Any, poll: Poll, waits: list[float]
) -> None:
    script, hook, ref = await scripted(lambda i, raw: 5.0)  # never answers within the 1 s timeout
    with pytest.raises(FalTimeoutError, match="ReadTimeout"):
        await poll(hook, ref)
    assert len(script.requests) == 3 and len(waits) == 2


async def test_a_redirect_is_left_to_httpx_which_follows_it(scripted: Any, poll: Poll) -> None:
    def handler(i: int, raw: bytes) -> bytes:
        if b"/moved " in raw.split(b"\r\n")[0] or b"/moved?" in raw:
            return answer(202, RUNNING)
        return answer(307, {}, location="/queue/a/b/requests/r1/moved")

    script, hook, ref = await scripted(handler)
    assert isinstance(await poll(hook, ref), InProgressStatus)
    assert len(script.requests) == 3  # lane (307), httpx (307), httpx follows to /moved


def test_the_lane_writes_the_bytes_h11_would_and_refuses_what_h11_would_refuse() -> None:
    import h11

    headers = {"Authorization": "Key id:secret", "User-Agent": "airflow-provider-fal/1", "Accept": "*/*"}
    ours = _transport.request_bytes("/queue/a/b/requests/r1/status?logs=0", "h:8080", headers)
    h11_client = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target="/queue/a/b/requests/r1/status?logs=0",
                          headers=[("Host", "h:8080"), *headers.items()])  # fmt: skip
    assert ours == h11_client.send(request) + h11_client.send(h11.EndOfMessage())
    for bad in ({"X-A": "v\r\nInjected: 1"}, {"Bad Name": "v"}, {"X-A": " padded"}, {"X-A": "caf\u00e9"}):
        assert _transport.request_bytes("/", "h", bad) is None, bad  # left to httpx, which says why


async def test_chunked_answers_and_answers_ended_by_a_close_are_read_whole(scripted: Any, poll: Poll) -> None:
    body = json.dumps(RUNNING).encode()
    head = b"HTTP/1.1 202 X\r\ncontent-type: application/json\r\n"
    chunked = head + b"transfer-encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:])
    replies = [chunked, (head + b"\r\n" + body,), chunked]
    script, hook, ref = await scripted(lambda i, raw: replies[i] if i < len(replies) else None)
    for _ in replies:
        assert isinstance(await poll(hook, ref), InProgressStatus)
    assert len(script.requests) == 3  # each answer read whole: no retry
    assert script.connections == 2  # an answer that ended with its connection leaves nothing to reuse


async def test_a_garbled_answer_is_a_protocol_error_retried_then_a_connection_error(
    scripted: Any, poll: Poll, waits: list[float]
) -> None:
    script, hook, ref = await scripted(lambda i, raw: b"HTTP/1.1 abc\r\n\r\n")
    with pytest.raises(FalConnectionError):
        await poll(hook, ref)
    assert len(script.requests) == 3 and len(waits) == 2


async def test_a_call_queued_at_a_full_lane_waits_without_a_task_and_times_out_as_a_pool_timeout() -> None:
    lane = _transport.WireLane(ssl_context=lambda: None, max_connections=1)  # type: ignore[arg-type,return-value]
    lane._slots = asyncio.Semaphore(1)
    await lane._slots.acquire()  # the one connection is busy
    tasks_before = len(asyncio.all_tasks())
    queued = asyncio.ensure_future(
        lane.get("http://127.0.0.1:9/status", {}, {}, httpx.Timeout(5.0, pool=0.2))
    )
    await asyncio.sleep(0.05)
    # 10,000 waiters queued at a full pool: a task each (asyncio.wait_for) filled whole loop iterations
    assert len(asyncio.all_tasks()) == tasks_before + 1  # only the caller's own
    with pytest.raises(httpx.PoolTimeout):
        await queued
    lane._slots.release()
    assert not lane._slots.locked()
