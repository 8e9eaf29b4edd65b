"""The result rules of every model-output operator (``select``, ``output_path``, ``download_media``,
``max_xcom_bytes``), checked at parse time and again after rendering, before anything is paid for.

Generic checks (numbers, headers, templating) live in :mod:`fal_provider.models`; the submit's own
inputs in :mod:`fal_provider.operators._submission`.
"""

from __future__ import annotations

from typing import Any

from fal_provider.exceptions import FalInputError
from fal_provider.models import check_number, is_templated
from fal_provider.results import StagedOutput, check_select, target_file, unwritable

# --------------------------------------------------------------------------- numbers


def check_max_xcom_bytes(value: Any) -> int | None:
    """``None`` or ``0``: no limit; otherwise a byte count."""
    return check_number(value, "max_xcom_bytes", integer=True, minimum=0, allow_none=True)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- output_path


def storage_path(output_path: Any) -> Any:
    """``output_path`` as an ObjectStoragePath; an unknown scheme fails here, without any I/O."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_path, ObjectStoragePath):
        return output_path
    if not isinstance(output_path, str) or not output_path.strip():
        raise FalInputError(
            "output_path must be a URI or ObjectStoragePath (e.g. 'file:///data/fal/' or "
            f"'s3://conn@bucket/prefix/'), got {type(output_path).__name__} {output_path!r}"
        )
    try:
        path = ObjectStoragePath(output_path)
        _check_scheme(path.protocol)
    except Exception as err:
        raise FalInputError(
            f"output_path {output_path!r} is not a usable URI or ObjectStoragePath: {err}. Use a scheme "
            "Airflow's object storage knows (file://, s3://, gs://, ...; install the provider that "
            "brings it) or a local absolute path."
        ) from None
    return path


def _check_scheme(protocol: Any) -> None:
    """Older Airflow builds the path lazily and only fails on first use: ask fsspec's registry,
    which knows every scheme it can load (installed or not) without touching a filesystem."""
    import fsspec

    schemes = protocol if isinstance(protocol, tuple | list) else (protocol,)
    known = set(fsspec.available_protocols()) | {"file", "local"}
    unknown = [scheme for scheme in schemes if scheme and scheme not in known]
    if unknown:
        raise ValueError(f"unknown scheme {unknown[0]!r}")


def check_output_path(output_path: Any) -> None:
    """Parse-time part: the value is a path whose scheme is known (no filesystem is touched)."""
    if output_path is not None:
        storage_path(output_path)


def probe_output_path(output_path: Any, name: str | None) -> None:
    """Run-time part: the result's folder can be created and written, checked before paying.

    A temporary file is written where the result will go and removed again, together with any
    folders the probe created, so a probe leaves the location as it found it.
    """
    if output_path is None:
        return
    result_file = target_file(storage_path(output_path), name)
    output = StagedOutput(on_error=unwritable)
    try:
        output.stage(result_file.parent / ".fal-write-probe", b"")
    finally:
        output.rollback()


def check_result_rules(select: Any, output_path: Any, download_media: Any, max_xcom_bytes: Any) -> Any:
    """Parse-time checks of the result rules every model-output operator has; returns the limit."""
    if download_media and output_path is None:
        raise FalInputError("download_media=True needs output_path=... (where to copy the media files)")
    if not is_templated(select):
        check_select(select)
    if not is_templated(output_path):
        check_output_path(output_path)
    return check_max_xcom_bytes(max_xcom_bytes)


def check_rendered_result_rules(select: Any, output_path: Any) -> None:
    """Run-time checks of the rendered result rules, including that ``output_path`` is writable."""
    check_select(select)
    check_output_path(output_path)
    probe_output_path(output_path, None)
