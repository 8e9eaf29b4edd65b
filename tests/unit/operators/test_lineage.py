"""Lineage of a finished fal task: OpenLineage datasets and run facet, and outlet asset extras."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from airflow.sdk import Asset

from fal_provider.operators.fal import FalInferenceOperator
from fal_provider.operators.lineage import dataset_name, input_urls, output_urls
from fal_provider.waiting import completed_event
from tests.unit.operators.fakes import APP, done, install_hook, make_context, make_hook, make_ref

pytest.importorskip("airflow.providers.openlineage")

RESULT = {"images": [{"url": "https://v3.fal.media/files/a/out.png", "content_type": "image/png"}], "seed": 3}


def finished(**kwargs: Any) -> tuple[FalInferenceOperator, dict[str, Any], Any]:
    op = FalInferenceOperator(
        task_id="t2i",
        app_id=APP,
        arguments={"prompt": "a cat", "image_url": "https://example.com/in.png", "mask": "data:,x"},
        deferrable=False,
        **kwargs,
    )
    install_hook(op, make_hook([done()], result=RESULT))
    context = make_context()
    context["outlet_events"] = MagicMock(name="outlet_events")
    status = done().model_copy(update={"metrics": {"inference_time": 0.5}})
    value = op.complete(context, completed_event(status, make_ref()))
    return op, context, value


def test_inputs_outputs_and_the_fal_run_facet() -> None:
    op, _, _ = finished()
    lineage = op.get_openlineage_facets_on_complete(MagicMock(name="ti"))
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("https://example.com", "/in.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("https://v3.fal.media", "/files/a/out.png")]
    facet = lineage.run_facets["fal"]
    assert facet.appId == APP and facet.requestIds == ["req-1"]
    assert facet.metrics == {"inference_time": 0.5}
    # The completion's cost record, kept on the operator, is the facet's cost.
    assert facet.cost is not None and facet.cost["request_id"] == "req-1"
    assert facet.cost == {k: v for k, v in op.fal_cost.items() if not isinstance(v, dict | list)}


def test_without_outlets_the_record_is_built_only_when_the_listener_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def eager(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the lineage record was built in execute_complete")

    monkeypatch.setattr("fal_provider.operators.fal.record_result", eager)
    op, _, _ = finished()
    assert op.fal_lineage_source is not None
    lineage = op.get_openlineage_facets_on_complete(MagicMock(name="ti"))
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("https://v3.fal.media", "/files/a/out.png")]
    assert lineage.run_facets["fal"].requestIds == ["req-1"]
    assert op.fal_lineage_source is None, "built once, then only the small record stays"


def test_output_path_files_are_outputs(tmp_path: Path) -> None:
    op, _, manifest = finished(output_path=str(tmp_path))
    lineage = op.get_openlineage_facets_on_complete(MagicMock(name="ti"))
    names = [(d.namespace, d.name) for d in lineage.outputs]
    assert ("file", manifest["result_path"]) in names
    assert ("https://v3.fal.media", "/files/a/out.png") in names


def test_cost_record_left_on_the_operator_goes_into_the_facet() -> None:
    op, _, _ = finished()
    op.fal_cost = {"cost": 0.003, "currency": "USD", "units": 1.0, "nested": {"dropped": True}}
    facet = op.get_openlineage_facets_on_complete(MagicMock(name="ti")).run_facets["fal"]
    assert facet.cost == {"cost": 0.003, "currency": "USD", "units": 1.0}
    assert facet.billableUnits == 1.0


def test_cost_xcom_is_read_only_in_the_task_process() -> None:
    op, _, _ = finished()
    op.fal_cost = None  # no record left on the operator: lineage falls back to the XCom
    ti = MagicMock(name="ti", task_id="t2i", map_index=-1)
    ti.xcom_pull.return_value = {"cost": 0.01, "currency": "USD"}
    assert op.get_openlineage_facets_on_complete(ti).run_facets["fal"].cost == {
        "cost": 0.01,
        "currency": "USD",
    }
    op._fal_lineage_pid = os.getpid() + 1  # the listener's forked child: no supervisor calls
    ti.xcom_pull.reset_mock()
    assert op.get_openlineage_facets_on_complete(ti).run_facets["fal"].cost is None
    ti.xcom_pull.assert_not_called()


def test_outlet_asset_events_carry_the_written_files(tmp_path: Path) -> None:
    asset = Asset(name="images", uri="fal://images")
    _, context, manifest = finished(output_path=str(tmp_path), download_media=False, outlets=[asset])
    extra = context["outlet_events"][asset].extra.update.call_args.args[0]
    assert extra["files"] == [manifest["result_path"]]
    assert extra["fal_request_ids"] == ["req-1"] and extra["media_urls"] == [RESULT["images"][0]["url"]]


def test_no_record_no_lineage() -> None:
    op = FalInferenceOperator(task_id="t", app_id=APP, arguments={})
    assert op.get_openlineage_facets_on_complete(MagicMock()) is None


def test_url_helpers() -> None:
    assert input_urls({"a": ["https://x/1.png", {"b": "http://y/2"}], "c": "data:,z", "d": 3}) == [
        "https://x/1.png",
        "http://y/2",
    ]
    assert output_urls({"images": [{"url": "https://cdn/x.png"}, {"url": "data:,y"}]}) == [
        "https://cdn/x.png"
    ]
    assert dataset_name("s3://bucket/key/a.json") == ("s3://bucket", "key/a.json")
    assert dataset_name("/tmp/a.json") == ("file", "/tmp/a.json")
    assert dataset_name("file:///tmp/a.json") == ("file", "/tmp/a.json")
