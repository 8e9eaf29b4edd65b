"""The result rules (select, output_path, download_media, max_xcom_bytes) for operators whose
result is a list of outputs (realtime) or events (``collect="all"``), and the file stem per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fal_provider.results import MediaFetch, check_xcom_size, persist_result, select_fields

#: The result-rule settings, stored under these names by every operator that returns model output.
RESULT_RULES = ("select", "output_path", "download_media", "max_xcom_bytes")


def result_rules(operator: Any) -> dict[str, Any]:
    """An operator's result-rule settings as keyword arguments for ``shape_items`` / ``shape_result``."""
    return {name: getattr(operator, name) for name in RESULT_RULES}


def shape_items(
    items: list[Any],
    *,
    select: str | Sequence[str] | None,
    output_path: Any,
    download_media: bool,
    max_xcom_bytes: int | None,
    name: str,
    timeout: float = 120.0,
    fetch: MediaFetch | None = None,
) -> Any:
    """The result rules of :mod:`fal_provider.results`, with ``select`` applied to each item.

    A list of outputs (realtime) or events (``collect="all"``) is selected item by item, since
    each item has the app's output schema. ``select`` is checked before anything is written, so a
    wrong field path never leaves a result file behind a failed task.
    """
    selected = [select_fields(item, select) for item in items] if select is not None else None
    if output_path is None:
        value = selected if selected is not None else items
        check_xcom_size(value, max_xcom_bytes)
        return value
    written, manifest = persist_result(
        items, output_path, download_media=download_media, request_id=name, timeout=timeout, fetch=fetch
    )
    if select is not None:
        manifest["selected"] = [select_fields(item, select) for item in written]
    check_xcom_size(manifest, max_xcom_bytes)
    return manifest


def output_name(context: Mapping[str, Any], kind: str) -> str:
    """A file stem unique per task instance, so mapped or repeated runs never overwrite each other."""
    ti = context.get("ti") or context.get("task_instance")
    if ti is None:
        return kind
    stem = f"{kind}_{ti.task_id}_{ti.run_id}"
    map_index = getattr(ti, "map_index", -1)
    return f"{stem}_{map_index}" if isinstance(map_index, int) and map_index >= 0 else stem
