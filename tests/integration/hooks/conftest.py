"""Fixtures of the FalHook integration tests: hooks on the emulator connection, recorded retry waits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.hooks.fal import FalHook
from tests.fakes.retry_waits import waits

__all__ = ["ahook", "hook", "waits"]


@pytest.fixture
def hook(fal_emulator_conn: FalEmulator) -> Iterator[FalHook]:
    hook = FalHook()
    yield hook
    hook.close()


@pytest.fixture
async def ahook(fal_emulator_conn: FalEmulator) -> AsyncIterator[FalHook]:
    """For async tests; closes the loop's shared client afterwards."""
    yield FalHook()
    await FalHook.aclose_shared_client()
