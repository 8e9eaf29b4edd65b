"""FalBatchOperator's local checks: every bad input fails before anything is paid for."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fal_provider.exceptions import FalInputError
from fal_provider.hooks.fal import FalHook
from fal_provider.operators._batch_inputs import BatchInputError, iter_items, parse_item, validate_all
from fal_provider.operators._batch_journal import JournalState
from fal_provider.operators._batch_output import assemble
from fal_provider.operators._batch_store import Part, batch_folder
from fal_provider.operators.batch import FalBatchOperator
from tests.unit.operators.fakes import install_hook, make_hook


def op(**kwargs: Any) -> FalBatchOperator:
    params: dict[str, Any] = {"task_id": "b", "app_id": "fal-ai/flux/schnell", "inputs": [{"prompt": "x"}]}
    params["output_path"] = "file:///tmp/unused"
    params.update(kwargs)
    return FalBatchOperator(**params)


def context() -> dict[str, Any]:
    return {"ti": SimpleNamespace(task_id="b", try_number=1, map_index=-1), "run_id": "manual__u"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_in_flight": 0}, "max_in_flight must be an integer >= 1"),
        ({"max_in_flight": True}, "max_in_flight must be an integer"),
        ({"min_success_ratio": 1.5}, "between 0 and 1"),
        ({"min_success_ratio": -0.1}, "min_success_ratio must be a number >= 0"),
        ({"max_item_attempts": 0}, "max_item_attempts"),
        ({"wait_mode": "webhook"}, "not offered for batches"),
        ({"on_orphan": "adopt"}, "on_orphan must be one of"),
        ({"output_path": None}, "needs output_path"),
        ({"inputs": {"prompt": "x"}}, "must be a list of argument dicts"),
        ({"app_id": "not an app"}, "app"),
        ({"max_cost": -1}, "max_cost"),
        ({"budget_limit": 5}, "budget_limit needs budget="),
        ({"budget": "nightly", "budget_scope": "everywhere"}, "budget_scope must be one of"),
        ({"cache": "yes"}, "cache must be True or False"),
    ],
)
def test_bad_parameters_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FalInputError, match=message):
        op(**kwargs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"prompt": "a"}, "just text"], "Batch input 1 must be a JSON object"),
        ([{"prompt": "a"}, {"prompt": object()}], "Batch input 1"),
        ([{"prompt": float("nan")}], "Batch input 0"),
        ([{"arguments": {"p": 1}, "path": 3}], "Batch input 0: 'path' must be a string"),
        ([{"arguments": {"p": 1}, "options": {"priority": "urgent"}}], "Batch input 0"),
    ],
)
def test_a_bad_item_is_named_by_index_before_any_submit(
    inputs: list[Any], message: str, tmp_path: Path
) -> None:
    batch = install_hook(op(inputs=inputs, output_path=f"file://{tmp_path}"), hook := make_hook())
    with pytest.raises(BatchInputError, match=message):
        batch.execute(context())
    hook.asubmit.assert_not_called()
    hook.submit.assert_not_called()
    assert not list(tmp_path.iterdir()), "nothing written either"


def test_a_jsonl_line_that_is_not_an_object_names_its_index_and_line(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n\n[1, 2]\n')
    with pytest.raises(BatchInputError, match="Batch input 1 must be a JSON object"):
        validate_all(ObjectStoragePath(f"file://{source}"), app_id="a/b", path="", shared_options={})
    source.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(BatchInputError, match=r"Batch input 1 \(line 2 of .*\) is not valid JSON"):
        validate_all(ObjectStoragePath(f"file://{source}"), app_id="a/b", path="", shared_options={})


def test_an_unwritable_output_path_fails_before_any_submit(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    batch = install_hook(op(output_path=f"file://{blocker}/out"), hook := make_hook())
    with pytest.raises(OSError):
        batch.execute(context())
    hook.asubmit.assert_not_called()


def test_items_take_their_own_path_and_options_over_the_shared_ones() -> None:
    inputs = [
        {"prompt": "plain"},
        {"arguments": {"prompt": "own"}, "path": "/dev", "options": {"priority": "low"}, "meta": {"k": 1}},
    ]
    items = list(iter_items(inputs, app_id="a/b", path="/sub", shared_options={"priority": "normal"}))
    assert (items[0].path, items[0].options.priority, items[0].arguments) == (
        "/sub",
        "normal",
        {"prompt": "plain"},
    )
    assert (items[1].path, items[1].options.priority, items[1].meta) == ("/dev", "low", {"k": 1})
    assert (
        items[0].fingerprint
        != parse_item(0, {"prompt": "other"}, app_id="a/b", path="/sub", shared_options={}).fingerprint
    )


def test_a_model_input_named_arguments_is_kept_when_other_keys_sit_beside_it() -> None:
    item = parse_item(0, {"arguments": {"x": 1}, "prompt": "p"}, app_id="a/b", path="", shared_options={})
    assert item.arguments == {"arguments": {"x": 1}, "prompt": "p"}


def test_journal_replay_keeps_only_open_items_and_finished_indexes() -> None:
    state = JournalState()
    for record in [
        {"i": 0, "e": "intent", "a": 1, "fp": "f0"},
        {"i": 0, "e": "submitted", "a": 1, "rid": "r0"},
        {"i": 0, "e": "done", "outcome": "success"},
        {"i": 1, "e": "intent", "a": 1, "fp": "f1"},
        {"i": 1, "e": "submitted", "a": 1, "rid": "r1"},
        {"i": 2, "e": "intent", "a": 2, "fp": "f2"},
        {"i": 3, "e": "intent", "a": 1, "fp": "f3"},
        {"i": 3, "e": "released"},
        {"i": 4, "e": "done", "outcome": "failed", "retryable": True},
    ]:
        state.apply(record)
    assert state.finished == {0}
    assert {i: (o.attempt, o.request_id) for i, o in state.open.items()} == {1: (1, "r1"), 2: (2, None)}
    assert state.retryable == {4}


def test_journal_replay_sums_the_estimates_of_every_announced_post() -> None:
    """max_cost across tries reads the spend from the journal: each intent's estimate counts,
    retried attempts too (they may have been paid), items never announced do not."""
    state = JournalState()
    for record in [
        {"i": 0, "e": "intent", "a": 1, "fp": "f0", "est": 0.25},
        {"i": 0, "e": "done", "outcome": "failed", "retryable": True},
        {"i": 0, "e": "intent", "a": 2, "fp": "f0", "est": 0.25},
        {"i": 1, "e": "intent", "a": 1, "fp": "f1"},
        {"i": 2, "e": "done", "outcome": "not_submitted", "retryable": True},
    ]:
        state.apply(record)
    assert state.spent == 0.5
    assert 2 in state.retryable and 2 not in state.finished  # a later try sends it


def test_assembly_has_one_line_per_index_success_winning_over_an_earlier_failure(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    folder = batch_folder(ObjectStoragePath(f"file://{tmp_path}"), "manual__x:1", "t", 3)
    assert str(folder).endswith("manual__x_1/t.3")
    first, second = Part(folder / "parts", "results", 1), Part(folder / "parts", "results", 2)
    first.write({"index": 0, "status": "failed", "retryable": True, "error": "503"})
    first.write({"index": 1, "status": "success", "result": 1})
    second.write({"index": 0, "status": "success", "result": 0})
    second.write({"index": 1, "status": "success", "result": 1})  # a duplicate after a kill
    first.close(), second.close()
    assembled = assemble(folder)
    lines = [
        json.loads(line)
        for line in Path(str(tmp_path), "manual__x_1", "t.3", "results.jsonl").read_text().splitlines()
    ]
    assert sorted((line["index"], line["status"]) for line in lines) == [(0, "success"), (1, "success")]
    assert assembled.counts == {"success": 2} and assembled.retryable_failures == 0


def test_the_hook_methods_the_engine_uses_exist() -> None:
    for name in ("asubmit", "aget_status", "aiter_status", "aget_result", "acancel", "cancel", "request_ref"):
        assert callable(getattr(FalHook, name))
