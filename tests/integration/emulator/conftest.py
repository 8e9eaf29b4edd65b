"""Fixtures for raw-HTTP emulator tests: the reset session emulator and an authenticated client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator


@pytest.fixture
def emu(fal_emulator: FalEmulator) -> FalEmulator:
    return fal_emulator


@pytest.fixture
def client(emu: FalEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Key {emu.key}"}, timeout=30) as c:
        yield c
