"""Polling and submit helpers for raw-HTTP emulator tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate`` is truthy; generous timeout for a loaded 2-core machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def submit(client: httpx.Client, app: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post(f"/queue/{app}", json=body, **kwargs)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_completed(client: httpx.Client, status_url: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(status_url).json()
        return body if body["status"] == "COMPLETED" else None

    return dict(wait_for(done))
