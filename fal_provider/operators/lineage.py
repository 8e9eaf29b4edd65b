"""What a fal task read and wrote, for OpenLineage and for Airflow assets.

A fal request is a remote job: the OpenLineage provider cannot see inside it, so the operators
describe it themselves (``get_openlineage_facets_on_complete``, called by the OpenLineage
listener after a successful try):

* inputs: the media URLs found in the request's arguments (``image_url``, lists of URLs, ...);
* outputs: the media URLs in the result (fal's CDN), and the files written to ``output_path``
  (the result JSON and the downloaded media);
* a ``fal`` run facet: app id, request id(s), fal's timings, billable units and the cost record
  the ``fal_cost`` XCom holds when cost tracking produced one.

Each operator leaves a :class:`LineageRecord` (or what to build it from) when it completes; nothing here talks to fal, and
the OpenLineage imports happen only when the listener asks, so the provider does not depend on the
OpenLineage provider. The same record feeds the ``extra`` of the asset events Airflow emits for
the task's ``outlets``, so a DAG scheduled on those assets learns which files appeared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlparse

from fal_provider.results import iter_media

log = logging.getLogger(__name__)

#: XCom key under which a ``@task.fal`` try remembers its input URLs across a deferral.
INPUT_URLS_XCOM_KEY = "fal_input_urls"
#: The cost record (owned by the cost tracking; read here, never written): an XCom key, and the
#: operator attribute read first.
COST_XCOM_KEY = "fal_cost"
#: At most this many datasets per side: a fan-in of thousands of URLs is not useful lineage.
MAX_DATASETS = 100
FACET_SCHEMA_URL = (
    "https://github.com/airflow-provider-fal/airflow-provider-fal/blob/main/docs/lineage.md#falrunfacet"
)


@dataclass
class LineageRecord:
    """One task's fal requests and the data they read and wrote."""

    app_id: str
    request_ids: list[str] = field(default_factory=list)
    input_urls: list[str] = field(default_factory=list)
    output_urls: list[str] = field(default_factory=list)
    output_files: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    units: float | None = None

    def asset_extra(self) -> dict[str, Any]:
        """Small JSON for an asset event's ``extra``: what a downstream DAG needs to find the files."""
        extra: dict[str, Any] = {
            "fal_app_id": self.app_id,
            "fal_request_ids": self.request_ids[:MAX_DATASETS],
        }
        if self.output_files:
            extra["files"] = self.output_files[:MAX_DATASETS]
        if self.output_urls:
            extra["media_urls"] = self.output_urls[:MAX_DATASETS]
        return extra


# --------------------------------------------------------------------------- collecting


def _dedupe(values: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _is_remote_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _walk_strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 50:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _walk_strings(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk_strings(item, depth + 1)


def input_urls(arguments: Any) -> list[str]:
    """Every http(s) URL in the arguments: what fal will download (``data:`` URIs are inline, skipped)."""
    return _dedupe(s for s in _walk_strings(arguments) if _is_remote_url(s))


def output_urls(result: Any) -> list[str]:
    """fal's own copies of the generated files (``fal_url`` once ``download_media`` rewrote ``url``)."""
    urls = (str(media.get("fal_url") or media.get("url")) for _, media in iter_media(result))
    return _dedupe(url for url in urls if _is_remote_url(url))


def written_files(value: Any) -> list[str]:
    """The files an ``output_path`` manifest (or a list of them) says were written."""
    manifests = value if isinstance(value, list) else [value]
    files: list[str] = []
    for manifest in manifests:
        if not isinstance(manifest, Mapping) or "result_path" not in manifest:
            continue
        files.append(str(manifest["result_path"]))
        files.extend(str(item["path"]) for item in manifest.get("media") or () if isinstance(item, Mapping))
    return _dedupe(iter(files))


def record_result(
    app_id: str,
    request_ids: Sequence[str],
    *,
    arguments: Any,
    result: Any,
    value: Any,
    metrics: Mapping[str, Any] | None = None,
    units: float | None = None,
) -> LineageRecord:
    """The lineage of a finished task: ``result`` is fal's full answer, ``value`` what went to XCom."""
    return LineageRecord(
        app_id=app_id,
        request_ids=[rid for rid in request_ids if rid],
        input_urls=input_urls(arguments),
        output_urls=output_urls(result),
        output_files=written_files(value),
        metrics=dict(metrics or {}),
        units=units,
    )


def annotate_outlets(context: Any, outlets: Sequence[Any], record: LineageRecord) -> None:
    """Put the written files into the asset events of the task's ``outlets`` (best effort).

    Airflow emits one event per outlet asset when the try succeeds; its ``extra`` is what a DAG
    scheduled on the asset reads (``triggering_asset_events``) to find the new files.
    """
    if not outlets:
        return
    try:
        from airflow.sdk import Asset

        events = context["outlet_events"]
        for outlet in outlets:
            if isinstance(outlet, Asset):
                events[outlet].extra.update(record.asset_extra())
    except Exception as err:  # an annotation must never fail a task whose request succeeded
        log.warning("Could not add the fal outputs to the outlet asset events: %s", err)


def remember_inputs(context: Any, arguments: Any) -> None:
    """Keep the input URLs for the completion of a deferred try (it does not see the arguments)."""
    context["ti"].xcom_push(key=INPUT_URLS_XCOM_KEY, value=input_urls(arguments)[:MAX_DATASETS])


def recall_inputs(context: Any) -> list[str]:
    """The input URLs :func:`remember_inputs` kept before the deferral."""
    try:
        ti = context["ti"]
        urls = ti.xcom_pull(task_ids=ti.task_id, key=INPUT_URLS_XCOM_KEY, map_indexes=ti.map_index)
    except Exception as err:
        log.debug("No remembered fal input URLs: %s", err)
        return []
    return [str(url) for url in urls] if isinstance(urls, list) else []


# --------------------------------------------------------------------------- OpenLineage


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` for a URL or path: ``scheme://authority`` and the path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file", "local"):
        return "file", parsed.path or uri
    if parsed.scheme in ("http", "https"):
        return f"{parsed.scheme}://{parsed.netloc}", parsed.path or "/"
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path.lstrip("/") or "/"


@cache
def _facet_class() -> type:
    """The ``fal`` run facet, defined on first use (``openlineage-python`` is optional)."""
    import attrs
    from airflow.providers.common.compat.openlineage.facet import RunFacet

    @attrs.define
    class FalRunFacet(RunFacet):  # type: ignore[misc]
        """What fal did in this task: app, request ids, fal's timings, units and cost."""

        appId: str  # OpenLineage facets use camelCase
        requestIds: list[str]
        metrics: dict[str, Any] = attrs.field(factory=dict)
        billableUnits: float | None = None
        cost: dict[str, Any] | None = None

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return FalRunFacet


def cost_record(operator: Any, task_instance: Any) -> dict[str, Any] | None:
    """The cost record as plain JSON values, or ``None`` (no cost tracking, or unreadable).

    Read from the operator's ``fal_cost`` attribute when the cost tracking left one there, else
    from the ``fal_cost`` XCom, but only in the task's own process: the OpenLineage listener runs
    this in a forked child by default, where a call to the supervisor would hang.
    """
    raw = getattr(operator, COST_XCOM_KEY, None)
    if raw is None and getattr(operator, "_fal_lineage_pid", None) == os.getpid():
        try:
            raw = task_instance.xcom_pull(
                task_ids=task_instance.task_id, key=COST_XCOM_KEY, map_indexes=task_instance.map_index
            )
        except Exception as err:
            log.debug("No fal_cost XCom for lineage: %s", err)
    to_dict = getattr(raw, "to_dict", None)
    if callable(to_dict):
        raw = to_dict()
    if isinstance(raw, Mapping):
        return {str(k): v for k, v in raw.items() if isinstance(v, str | int | float | bool | type(None))}
    return None


def operator_lineage(operator: Any, task_instance: Any) -> Any:
    """The ``OperatorLineage`` for the listener, or ``None`` without a record or OpenLineage."""
    record: LineageRecord | None = getattr(operator, "fal_lineage", None)
    if record is None:
        return None
    try:
        from airflow.providers.common.compat.openlineage.facet import InputDataset, OutputDataset
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    outputs = (record.output_files + record.output_urls)[:MAX_DATASETS]
    cost = cost_record(operator, task_instance)
    units = record.units
    if units is None and cost is not None:
        units = next(
            (cost[k] for k in ("units", "billable_units") if isinstance(cost.get(k), int | float)), None
        )
    facet = _facet_class()(
        appId=record.app_id,
        requestIds=record.request_ids,
        metrics=record.metrics,
        billableUnits=units,
        cost=cost,
    )
    return OperatorLineage(
        inputs=[InputDataset(*dataset_name(uri)) for uri in record.input_urls[:MAX_DATASETS]],
        outputs=[OutputDataset(*dataset_name(uri)) for uri in outputs],
        run_facets={"fal": facet},
    )


class FalLineageMixin:
    """``get_openlineage_facets_on_complete`` from the :class:`LineageRecord` the operator kept.

    The listener calls the OpenLineage method after the try, possibly in a forked child, so
    everything it needs must already be in memory. An operator finishing a task either calls
    :meth:`keep_lineage` with the record (a task with ``outlets`` needs it at once, for the asset
    events), or sets :attr:`fal_lineage_source`: the keyword arguments of :func:`record_result`
    plus ``pid`` (``os.getpid()`` of the task process). Those are references to what the task
    holds anyway (arguments, fal's result, the XCom value), so a task the listener never asks
    about walks no result for URLs; :attr:`fal_lineage` builds the record on first use.
    """

    _fal_lineage: LineageRecord | None = None
    #: ``record_result``'s keyword arguments and ``pid``, until :attr:`fal_lineage` is read.
    fal_lineage_source: dict[str, Any] | None = None

    @property
    def fal_lineage(self) -> LineageRecord | None:
        if self._fal_lineage is None and self.fal_lineage_source is not None:
            source = dict(self.fal_lineage_source)
            self._fal_lineage_pid = source.pop("pid", None)
            self._fal_lineage = record_result(**source)
            self.fal_lineage_source = None
        return self._fal_lineage

    @fal_lineage.setter
    def fal_lineage(self, record: LineageRecord | None) -> None:
        self._fal_lineage = record
        self.fal_lineage_source = None

    def keep_lineage(self, context: Any, record: LineageRecord) -> None:
        self.fal_lineage = record
        self._fal_lineage_pid = os.getpid()
        annotate_outlets(context, getattr(self, "outlets", None) or [], record)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return operator_lineage(self, task_instance)
