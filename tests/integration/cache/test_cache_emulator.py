"""The result cache and orphan recovery over real HTTP against the emulator.

The emulator's submit counter is the evidence of what was paid for.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider._compat import AIRFLOW_V_3_3_PLUS
from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalConnectionError
from fal_provider.operators.fal import FalInferenceOperator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class StateStore:
    """``context["task_state_store"]``: one per task instance, surviving its tries."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def context(task_id: str = "t", store: StateStore | None = None) -> dict[str, Any]:
    ti = MagicMock(name="ti", dag_id="d", run_id="r", task_id=task_id, map_index=-1)
    ti.xcom_pull.return_value = None
    return {"ti": ti, "task_state_store": store or StateStore()}


def submits(emu: FalEmulator) -> int:
    return int(emu.stats()["submits_total"])


def infer(app_id: str, arguments: dict[str, Any], cache_path: Path, **kwargs: Any) -> FalInferenceOperator:
    return FalInferenceOperator(
        task_id=kwargs.pop("task_id", "t"),
        app_id=app_id,
        arguments=arguments,
        cache=True,
        cache_path=cache_path,
        deferrable=False,
        poll_interval=0.05,
        max_poll_interval=0.2,
        **kwargs,
    )


def test_a_rerun_pays_nothing_and_cached_media_feed_the_next_model(
    fal_emulator_conn: FalEmulator, tmp_path: Path
) -> None:
    emu = fal_emulator_conn
    emu.configure(latency_scale=0)
    args = {"prompt": "a red barn", "seed": 7, "num_images": 1}
    first = infer("fal-ai/flux/schnell", args, tmp_path).execute(context())
    assert submits(emu) == 1
    copy = first["images"][0]["url"]
    assert copy.startswith(f"file://{tmp_path}/media/")
    assert Path(copy.removeprefix("file://")).read_bytes().startswith(PNG_MAGIC)
    assert first["images"][0]["fal_url"].startswith(emu.cdn_url)

    again = infer("fal-ai/flux/schnell", dict(reversed(args.items())), tmp_path).execute(context())
    assert again == first and submits(emu) == 1

    # The copy is not reachable by fal: the next model gets it uploaded to fal's CDN first.
    upscaled = infer("fal-ai/esrgan", {"image_url": copy, "scale": 2}, tmp_path).execute(context())
    assert submits(emu) == 2
    assert upscaled["image"]["width"] == 2 * first["images"][0]["width"]
    infer("fal-ai/esrgan", {"image_url": copy, "scale": 2}, tmp_path).execute(context())
    assert submits(emu) == 2


def test_two_tasks_with_the_same_input_at_once_pay_once(
    fal_emulator_conn: FalEmulator, tmp_path: Path
) -> None:
    emu = fal_emulator_conn
    args = {"duration_s": 1.5, "marker": "same input"}
    results: dict[str, Any] = {}

    def run(task_id: str) -> None:
        results[task_id] = infer("emulator/echo", args, tmp_path, task_id=task_id).execute(context(task_id))

    threads = [threading.Thread(target=run, args=(f"task{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(results) == {"task0", "task1", "task2"}
    assert all(value["marker"] == "same input" for value in results.values())
    assert submits(emu) == 1, "three tasks with one key paid more than once"


# Below Airflow 3.3 the intent goes to an Airflow Variable, not the ``task_state_store`` these tests
# read; tests/e2e/deployment/test_orphan_deployment.py covers that store through a real scheduler.
needs_task_state_store = pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS, reason="the stored request lives in task_state_store on Airflow 3.3+ only"
)


@needs_task_state_store
def test_a_lost_submit_answer_is_adopted_from_the_request_history(
    fal_emulator_conn: FalEmulator, tmp_path: Path
) -> None:
    """The POST reached fal but its answer never came back: the retry finds the request by input."""
    from fal_provider.hooks.fal import FalHook

    if not hasattr(FalHook, "get_request_history"):
        pytest.skip("FalHook.get_request_history (platform helper) not merged yet")
    emu = fal_emulator_conn
    emu.set_faults(kind="after_accept", answer="drop", count=1, endpoints=["submit"])
    store = StateStore()
    args = {"duration_s": 0.2, "marker": "orphan"}
    operator = FalInferenceOperator(
        task_id="t", app_id="emulator/echo", arguments=args, deferrable=False, poll_interval=0.05
    )
    with pytest.raises(FalConnectionError):
        operator.execute(context(store=store))
    assert submits(emu) == 1
    assert store.data["fal_request"]["request"] is None  # only the intent survived the try

    retry = FalInferenceOperator(
        task_id="t", app_id="emulator/echo", arguments=args, deferrable=False, poll_interval=0.05
    )
    assert retry.execute(context(store=store))["marker"] == "orphan"
    assert submits(emu) == 1, "the retry paid again instead of adopting the request"


@needs_task_state_store
def test_with_no_history_on_orphan_fail_stops_and_resubmit_pays_again(
    fal_emulator_conn: FalEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fal_provider.exceptions import FalOrphanedRequestError
    from fal_provider.hooks.fal import FalHook

    def unavailable(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Platform API down")

    monkeypatch.setattr(FalHook, "get_request_history", unavailable, raising=False)
    emu = fal_emulator_conn
    emu.set_faults(kind="after_accept", answer="drop", count=1, endpoints=["submit"])
    store = StateStore()
    args = {"duration_s": 0.1, "marker": "orphan-policy"}

    def op(**kwargs: Any) -> FalInferenceOperator:
        return FalInferenceOperator(
            task_id="t",
            app_id="emulator/echo",
            arguments=args,
            deferrable=False,
            poll_interval=0.05,
            **kwargs,
        )

    with pytest.raises(FalConnectionError):
        op().execute(context(store=store))
    with pytest.raises(FalOrphanedRequestError, match="on_orphan='fail'"):
        op(on_orphan="fail").execute(context(store=store))
    assert submits(emu) == 1
    assert op().execute(context(store=store))["marker"] == "orphan-policy"
    assert submits(emu) == 2


def test_cached_run_for_taskflow_code(
    fal_emulator_conn: FalEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fal_provider.cache import ResultCache, cached_run
    from fal_provider.hooks.fal import FalHook

    emu = fal_emulator_conn
    emu.configure(latency_scale=0)
    args = {"prompt": "a boat", "seed": 3}
    first = cached_run(FalHook(), "fal-ai/flux/schnell", args, cache=tmp_path)
    assert emu.stats()["runs"] == 1
    assert first["images"][0]["url"].startswith(f"file://{tmp_path}/media/")
    [entry] = list(ResultCache(tmp_path).entries())
    assert entry.cost is not None and entry.cost > 0  # units x list price, known at caching time
    with caplog.at_level("INFO"):
        assert cached_run(FalHook(), "fal-ai/flux/schnell", args, cache=tmp_path) == first
    assert emu.stats()["runs"] == 1
    assert f"cache hit, saved ~{entry.saved}" in caplog.text
    cached_run(FalHook(), "fal-ai/flux/schnell", args, cache=tmp_path, refresh_cache=True)
    assert emu.stats()["runs"] == 2
