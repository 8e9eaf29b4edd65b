"""FalStreamOperator over real HTTP/SSE against the emulator's ``/stream`` endpoints."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fal_provider._compat import AirflowFailException
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalNotFoundError, FalRequestFailed, FalStreamError, FalTimeoutError
from fal_provider.operators.streaming import FalStreamOperator
from tests.integration.streaming.conftest import task_context


def run(**kwargs: Any) -> Any:
    params: dict[str, Any] = {"task_id": "t", "app_id": "emulator/stream"}
    params.update(kwargs)
    return FalStreamOperator(**params).execute(task_context())


def test_final_event_is_the_last_before_close(emu: FalEmulator) -> None:
    assert run(arguments={"count": 5, "interval_s": 0.01}) == {
        "done": True,
        "count": 5,
        "output": "streamed 5 events",
    }
    assert emu.stats()["stream_calls"] == 1


def test_collect_all_returns_every_event_in_order(emu: FalEmulator) -> None:
    events = run(arguments={"count": 3}, collect="all")
    assert events == [
        {"progress": 1, "count": 3},
        {"progress": 2, "count": 3},
        {"progress": 3, "count": 3},
        {"done": True, "count": 3, "output": "streamed 3 events"},
    ]


def test_llm_tokens_grow_and_the_final_event_is_complete(emu: FalEmulator) -> None:
    args = {"prompt": "why is the sky blue", "model": "google/gemini-flash-1.5"}
    partials = run(app_id="fal-ai/any-llm", arguments=args, collect="all", select="output", log_interval=0)
    assert len(partials) > 5
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(partials))
    final = run(app_id="fal-ai/any-llm", arguments=args)
    assert final["partial"] is False and final["error"] is None
    assert final["output"] == partials[-1]
    assert "why is the sky blue" in final["output"]


def test_broken_stream_is_a_retryable_error_naming_the_app(emu: FalEmulator, tmp_path: Path) -> None:
    with pytest.raises(FalStreamError) as info:
        run(arguments={"count": 5, "break_after": 2}, output_path=f"file://{tmp_path}")
    assert not isinstance(info.value, AirflowFailException)
    assert "emulator/stream" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "no half-written output"


def test_error_event_fails_with_the_apps_message(emu: FalEmulator) -> None:
    with pytest.raises(FalRequestFailed) as info:
        run(arguments={"count": 4, "error_at": 2})
    assert str(info.value) == (
        "fal stream from emulator/stream reported an error at event 2 (stream_error): "
        "Emulated stream error at event 2"
    )


def test_idle_timeout_stops_a_silent_stream_early(emu: FalEmulator) -> None:
    started = time.monotonic()
    with pytest.raises(FalTimeoutError, match=r"sent no event for idle_timeout=0\.5s \(after 2 event\(s\)\)"):
        run(arguments={"count": 2, "idle_s": 30}, idle_timeout=0.5)
    assert time.monotonic() - started < 20, "the stream must not wait for the app's 30 s pause"


def test_whole_stream_timeout(emu: FalEmulator) -> None:
    with pytest.raises(FalTimeoutError, match=r"did not finish within timeout=0\.5s"):
        run(arguments={"count": 400, "interval_s": 0.05}, timeout=0.5, idle_timeout=10)


def test_json_error_instead_of_an_event_stream_names_the_app(emu: FalEmulator) -> None:
    with pytest.raises(FalNotFoundError) as info:
        run(app_id="emulator/echo", arguments={"x": 1})
    assert "emulator/echo" in str(info.value)
    assert isinstance(info.value, AirflowFailException)


def test_output_path_holds_the_final_event(emu: FalEmulator, tmp_path: Path) -> None:
    manifest = run(arguments={"count": 2}, output_path=f"file://{tmp_path}", select="output")
    assert manifest["selected"] == "streamed 2 events"
    assert manifest["result_path"].endswith("stream_t_manual__it.json")
    written = json.loads((tmp_path / "stream_t_manual__it.json").read_text())
    assert written == {"done": True, "count": 2, "output": "streamed 2 events"}
