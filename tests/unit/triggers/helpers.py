"""Shared test doubles for FalRequestTrigger tests: a fake async hook and a run-to-first-event helper."""

from __future__ import annotations

from typing import Any
from unittest.mock import create_autospec

from fal_provider.hooks.fal import FalHook
from fal_provider.triggers.fal import FalRequestTrigger
from tests.unit.operators.fakes import install_hook, make_ref

REF = make_ref().to_xcom()


def trigger(**kwargs: Any) -> FalRequestTrigger:
    """A trigger on ``REF`` that polls fast enough for unit tests."""
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("max_poll_interval", 0.02)
    return FalRequestTrigger(request=REF, **kwargs)


def async_hook(statuses: list[Any] | None = None) -> Any:
    """A ``FalHook`` autospec whose status calls answer ``statuses`` in order and whose cancel succeeds."""
    hook = create_autospec(FalHook, instance=True, name="FalHook")
    hook.aget_status.side_effect = list(statuses or [])
    hook.acancel.return_value = "CANCELLATION_REQUESTED"
    return hook


async def first_event(trig: FalRequestTrigger, hook: Any) -> dict[str, Any]:
    event = await install_hook(trig, hook).run().__anext__()
    return event.payload
