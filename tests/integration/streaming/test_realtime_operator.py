"""FalRealtimeOperator over real WebSockets against the emulator's realtime endpoint."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

import fal_provider.hooks.fal as hook_module
from fal_provider._compat import AirflowFailException
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalNotFoundError, FalRealtimeError, FalStreamError
from fal_provider.operators.realtime import FalRealtimeOperator
from tests.integration.streaming.conftest import task_context

APP = "emulator/realtime"


def run(**kwargs: Any) -> Any:
    params: dict[str, Any] = {"task_id": "t", "app_id": APP, "log_interval": 0}
    params.update(kwargs)
    return FalRealtimeOperator(**params).execute(task_context())


@pytest.fixture
def drop_after(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the emulator hang up every session after N answers (its ``drop_after`` query control).

    The hook has no way to add arbitrary query parameters (real fal has no use for them), so the
    test wraps the URL builder; everything else (token, handshake, frames) is the real path.
    """

    def install(n: int) -> None:
        original = hook_module.realtime_url

        def with_drop(*args: Any, **kwargs: Any) -> str:
            return f"{original(*args, **kwargs)}&drop_after={n}"

        monkeypatch.setattr(hook_module, "realtime_url", with_drop)

    return install


@pytest.mark.parametrize("window", [1, 8])
def test_one_output_per_input_in_order_through_one_session(emu: FalEmulator, window: int) -> None:
    inputs = [{"i": i, "prompt": f"frame {i}", "blob": bytes([i])} for i in range(25)]
    assert run(inputs=inputs, max_in_flight=window) == inputs
    stats = emu.stats()
    assert stats["realtime_sessions"] == 1
    assert stats["realtime_messages"] == 25
    assert stats["tokens"] == 1


def test_dropped_session_reconnects_with_fresh_tokens_and_loses_nothing(
    emu: FalEmulator, drop_after: Any
) -> None:
    drop_after(3)
    inputs = [{"i": i} for i in range(10)]
    assert run(inputs=inputs, max_reconnects=5) == inputs, "no input lost, none duplicated, order kept"
    stats = emu.stats()
    assert stats["realtime_sessions"] == 4, "3 + 3 + 3 + 1 answers"
    assert stats["tokens"] == 4, "each reconnect fetches a fresh token"


def test_dropped_session_with_pipelining_resends_only_unanswered_inputs(
    emu: FalEmulator, drop_after: Any
) -> None:
    drop_after(4)
    inputs = [{"i": i} for i in range(12)]
    assert run(inputs=inputs, max_in_flight=3, max_reconnects=5) == inputs
    stats = emu.stats()
    assert stats["realtime_messages"] >= 12
    assert stats["realtime_sessions"] >= 3


def test_giving_up_after_max_reconnects_is_retryable(emu: FalEmulator, drop_after: Any) -> None:
    drop_after(2)
    with pytest.raises(FalStreamError) as info:
        run(inputs=[{"i": i} for i in range(10)], max_reconnects=1)
    assert not isinstance(info.value, AirflowFailException)
    assert "emulator/realtime" in str(info.value) and "max_reconnects=1; 4/10" in str(info.value)


def test_x_fal_error_frame_fails_with_error_and_reason(emu: FalEmulator, tmp_path: Path) -> None:
    inputs = [{"i": 0}, {"i": 1}, {"x_fal_error": "INTERNAL_ERROR"}, {"i": 3}]
    with pytest.raises(FalRealtimeError) as info:
        run(inputs=inputs, output_path=f"file://{tmp_path}")
    assert info.value.error == "INTERNAL_ERROR"
    assert info.value.reason == "requested by input"
    assert "emulator/realtime" in str(info.value) and "INTERNAL_ERROR" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "no half-written output"
    assert emu.stats()["realtime_sessions"] == 1, "an app error is not a reason to reconnect"


def test_x_fal_message_frames_are_not_taken_for_outputs(emu: FalEmulator) -> None:
    inputs = [{"i": 0}, {"i": 1, "x_fal_message": "timings"}, {"i": 2}]
    assert run(inputs=inputs, max_in_flight=3) == inputs


def test_app_without_realtime_endpoint_is_a_clear_permanent_error(emu: FalEmulator) -> None:
    with pytest.raises(FalNotFoundError) as info:
        run(app_id="fal-ai/flux/schnell", inputs=[{"prompt": "a cat"}])
    assert "fal-ai/flux/schnell" in str(info.value) and "no realtime endpoint" in str(info.value)
    assert isinstance(info.value, AirflowFailException)


def test_unencodable_input_fails_before_connecting(emu: FalEmulator) -> None:
    with pytest.raises(ValueError, match=r"input #1 for emulator/realtime .* is of type datetime\.datetime"):
        run(inputs=[{"i": 0}, {"when": dt.datetime(2024, 5, 1)}])
    stats = emu.stats()
    assert stats["tokens"] == 0 and stats["realtime_sessions"] == 0


def test_select_and_output_path(emu: FalEmulator, tmp_path: Path) -> None:
    inputs = [{"i": i, "prompt": f"p{i}"} for i in range(4)]
    manifest = run(inputs=inputs, select="prompt", output_path=f"file://{tmp_path}")
    assert manifest["selected"] == ["p0", "p1", "p2", "p3"]
    assert json.loads((tmp_path / "realtime_t_manual__it.json").read_text()) == inputs


def test_batch_function_from_taskflow_code_as_documented(emu: FalEmulator, drop_after: Any) -> None:
    """docs/streaming.md's TaskFlow recipe: the operator's batch logic driven by the async hook."""
    import asyncio

    from fal_provider.hooks.fal import FalHook
    from fal_provider.operators.realtime import run_realtime_batch

    drop_after(5)
    hook = FalHook()
    inputs = [{"i": i} for i in range(12)]

    async def go() -> list[Any]:
        try:
            return await run_realtime_batch(lambda: hook.arealtime(APP), inputs, app_id=APP, max_in_flight=4)
        finally:
            await hook.aclose_shared_client()

    assert asyncio.run(go()) == inputs
    assert emu.stats()["realtime_sessions"] >= 3
