"""Fakes for FalHook unit tests: a scripted httpx transport and a connection in the environment
(the recorded retry waits are shared with the integration tests, in ``tests/fakes``). Fixtures are
registered by this directory's conftest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from fal_provider.hooks import _transport
from fal_provider.hooks.fal import FalHook

KEY = "test-key-id:super-secret-value"
QUEUE = "http://fal.test/queue"
RUN = "http://fal.test/run"
REST = "http://fal.test/rest"
CDN = "http://fal.test/cdn"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests in order (the last answer repeats) and records every request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        # A fresh copy each time: one scripted answer may serve sync and async clients, repeatedly.
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.read())

    @property
    def calls(self) -> int:
        return len(self.requests)

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def connection_json(**overrides: Any) -> str:
    data: dict[str, Any] = {
        "conn_type": "fal",
        "password": KEY,
        "host": QUEUE,
        "extra": {"run_url": RUN, "rest_url": REST, "cdn_url": CDN, "retry_min_wait": 0.5},
    }
    data.update(overrides)
    return json.dumps(data)


@pytest.fixture(autouse=True)
def fal_conn(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json())


def spy_aget_connection(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the connection ids ``BaseHook.aget_connection`` is asked for (it still answers)."""
    from airflow.sdk import BaseHook

    calls: list[str] = []
    original = BaseHook.aget_connection.__func__  # type: ignore[attr-defined]

    async def spy(cls: type, conn_id: str) -> object:
        calls.append(conn_id)
        return await original(cls, conn_id)

    monkeypatch.setattr(BaseHook, "aget_connection", classmethod(spy))
    return calls


def mock_hook(script: Script, **kwargs: Any) -> FalHook:
    hook = FalHook(**kwargs)
    hook._client = httpx.Client(transport=httpx.MockTransport(script))
    return hook


@pytest.fixture
def async_transport() -> Iterator[Callable[[Script], None]]:
    """Install a MockTransport as the running loop's shared AsyncClient."""

    def install(script: Script) -> None:
        loop = asyncio.get_running_loop()
        _transport._async_clients[loop] = httpx.AsyncClient(transport=httpx.MockTransport(script))

    yield install
    _transport._async_clients.clear()


def ok(body: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {}, headers=headers)


def sse(*events: Any, comment: bool = True) -> httpx.Response:
    lines = [": ping\n\n"] if comment else []
    lines += [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    return httpx.Response(200, content="".join(lines).encode(), headers={"content-type": "text/event-stream"})
