"""Fixtures of the FalHook unit tests (defined in ``hook_fakes``)."""

from __future__ import annotations

from tests.fakes.retry_waits import waits
from tests.unit.hooks.hook_fakes import async_transport, fal_conn

__all__ = ["async_transport", "fal_conn", "waits"]
