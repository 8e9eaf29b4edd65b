"""The hook's retry waits, recorded instead of slept, for unit and integration tests alike."""

from __future__ import annotations

import pytest

from fal_provider.hooks import _transport


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits, recorded instead of slept (sync and async)."""
    recorded: list[float] = []

    async def fake_asleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(_transport, "sleep", recorded.append)
    monkeypatch.setattr(_transport, "asleep", fake_asleep)
    return recorded
