"""Point the official fal_client at the session emulator for each conformance test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fal_provider.emulator.testing import FalEmulator


@pytest.fixture
def emu(fal_emulator: FalEmulator) -> Iterator[FalEmulator]:
    with fal_emulator.patch_fal_client():
        yield fal_emulator
