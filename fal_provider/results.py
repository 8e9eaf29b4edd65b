"""Rules that turn a fal result into something that belongs in XCom.

fal results are usually small JSON documents whose media are URLs, so the default is to pass the
result through unchanged. Two things go wrong at scale, and these rules exist for them:

* a result (or a fan-out of thousands of them) is bigger than the metadata database should hold,
  so :func:`shape_result` refuses oversized values and points at ``select`` / ``output_path``;
* fal's media URLs expire, so ``download_media`` copies the files next to the persisted result and
  rewrites the URLs to the copies.

The functions are deliberately independent of any operator so the streaming and realtime operators
can apply the same rules to their final values. The module ends with the checks of the rules
themselves (parse time and after rendering, before anything is paid for) and their application to a
list of outputs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import mimetypes
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from fal_provider.exceptions import FalError, FalInputError, ResultShapeError, ResultTooLargeError
from fal_provider.models import check_number, is_templated

#: Default ceiling for a value returned to XCom without ``output_path`` (bytes of JSON).
DEFAULT_MAX_XCOM_BYTES = 256 * 1024

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- select

#: ``[0]``, ``['name']`` or ``["name"]`` inside a path: Python/JS indexing, not a select path.
_INDEX = re.compile(r"\[\s*(?:(\d+)|'([^']*)'|\"([^\"]*)\")\s*\]")
#: Appended when a list of paths seems to have been rendered by Jinja as its text.
_NATIVE_HINT = (
    " A Jinja template renders to a string: set render_template_as_native_obj=True on the DAG, "
    "or pass the list itself."
)


def _dotted(path: str) -> str:
    """``images[0].url`` -> ``images.0.url``; ``a['b']`` -> ``a.b``."""
    return _INDEX.sub(lambda m: "." + next(g for g in m.groups() if g is not None), path).lstrip(".")


def check_select_path(path: Any) -> None:
    """The syntax of one path, checked before any result exists (and at DAG parse time).

    Paths are field names and list indexes joined by dots; the usual mistake is Python or
    JavaScript indexing, so the error shows the dotted spelling of what was written.
    """
    if not isinstance(path, str) or not path.strip():
        raise ResultShapeError(f"select paths must be non-empty strings like 'images.0.url', got {path!r}")
    if "[" in path or "]" in path:
        stripped = path.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            raise ResultShapeError(
                f"select {path!r} looks like a list of paths rendered as text.{_NATIVE_HINT}"
            )
        raise ResultShapeError(
            f"select path {path!r}: list indexes and fields are joined by dots, not brackets; "
            f"write {_dotted(path)!r}"
        )
    if any(not segment for segment in path.split(".")):
        raise ResultShapeError(
            f"select path {path!r} has an empty segment (a leading, trailing or doubled '.'); "
            "join field names and list indexes with single dots, like 'images.0.url'"
        )


def check_select(select: Any) -> None:
    """``select`` is one dotted path (``images.0.url``) or a non-empty list of them."""
    if select is None:
        return
    if isinstance(select, str):
        check_select_path(select)
        return
    if isinstance(select, Mapping) or not isinstance(select, Sequence) or not select:
        raise ResultShapeError(
            f"select must be a field path like 'images.0.url' or a non-empty list of them, got {select!r}"
        )
    for path in select:
        check_select_path(path)


def resolve_path(result: Any, path: str) -> Any:
    """Follow a dotted field path (``images.0.url``) through dicts and lists.

    The error names the failing segment and what exists at that point, because the usual mistake
    is a guess at a model's output schema.
    """
    check_select_path(path)
    current = result
    walked: list[str] = []
    for segment in path.split("."):
        current = _step(current, segment, path, walked)
        walked.append(segment)
    return current


def _step(current: Any, segment: str, path: str, walked: list[str]) -> Any:
    where = ".".join(walked) or "<result>"
    if isinstance(current, dict):
        if segment in current:
            return current[segment]
        keys = ", ".join(sorted(map(str, current))) or "(none)"
        raise ResultShapeError(f"select path {path!r}: no field {segment!r} at {where}; fields there: {keys}")
    if isinstance(current, list):
        try:
            return current[int(segment)]
        except (ValueError, IndexError):
            raise ResultShapeError(
                f"select path {path!r}: {segment!r} is not a valid index at {where}, "
                f"which is a list of {len(current)} item(s) (use 0..{len(current) - 1})"
            ) from None
    raise ResultShapeError(
        f"select path {path!r}: {where} is a {type(current).__name__}, not an object or list, "
        f"so it has no field {segment!r}"
    )


def select_fields(result: Any, select: str | Sequence[str]) -> Any:
    """One path gives its value; a list of paths gives ``{path: value}`` so names stay explicit."""
    check_select(select)
    if isinstance(select, str):
        return resolve_path(result, select)
    return {path: resolve_path(result, path) for path in select}


# --------------------------------------------------------------------------- media


def _is_media_url(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("http://", "https://", "data:")))


def iter_media(result: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(field path, file object)`` for every fal file object in the result.

    fal returns generated files as objects with a ``url`` (``File``/``Image``: ``url``,
    ``content_type``, ``file_name``, ...), so an object with a URL-valued ``url`` is a file.
    """
    if isinstance(result, dict):
        if _is_media_url(result.get("url")):
            yield path, result
            return
        for key, value in result.items():
            yield from iter_media(value, f"{path}.{key}" if path else str(key))
    elif isinstance(result, list):
        for index, value in enumerate(result):
            yield from iter_media(value, f"{path}.{index}" if path else str(index))


#: Downloads one media URL: ``(url, timeout) -> (bytes, content type)``; ``FalHook.fetch_media``.
MediaFetch = Callable[[str, float], tuple[bytes, str | None]]


def _fetch(url: str, timeout: float, fetch: MediaFetch | None) -> tuple[bytes, str | None]:
    """A ``data:`` URI is decoded here; any other URL goes through the hook's transport (no key)."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        content_type = header[5:].split(";")[0] or None
        data = base64.b64decode(payload) if ";base64" in header else unquote(payload).encode()
        return data, content_type
    if fetch is not None:
        return fetch(url, timeout)
    from fal_provider.hooks.fal import fetch_media

    return fetch_media(url, timeout)


def _media_name(index: int, media: dict[str, Any], content_type: str | None) -> str:
    name = media.get("file_name")
    if not name and not str(media["url"]).startswith("data:"):
        name = urlparse(str(media["url"])).path.rsplit("/", 1)[-1]
    name = _SAFE_NAME.sub("_", str(name or "")).strip("._") or "file"
    if "." not in name:
        ext = mimetypes.guess_extension((content_type or media.get("content_type") or "").split(";")[0])
        name += ext or ".bin"
    return f"{index:03d}_{name}"


# --------------------------------------------------------------------------- output_path


@dataclass
class _Target:
    """Where the result JSON goes and the folder its media go to."""

    result_file: Any  # ObjectStoragePath
    media_dir: Any  # ObjectStoragePath


def _target(output_path: Any, request_id: str | None) -> _Target:
    from airflow.sdk import ObjectStoragePath

    try:
        base = output_path if isinstance(output_path, ObjectStoragePath) else ObjectStoragePath(output_path)
    except Exception as err:
        raise ResultShapeError(
            f"output_path {str(output_path)!r} is not a usable URI or ObjectStoragePath "
            f"(e.g. 'file:///data/fal/' or 's3://conn@bucket/prefix/'): {err}"
        ) from None
    result_file = target_file(base, request_id)
    stem = result_file.name[: -len(".json")]
    return _Target(result_file=result_file, media_dir=result_file.parent / f"{stem}_media")


def target_file(base: Any, request_id: str | None) -> Any:
    """The result JSON's path: ``base`` itself when it names a ``.json`` file, else a file in it."""
    if base.name.endswith(".json"):
        return base
    return base / f"{_SAFE_NAME.sub('_', request_id or 'result')}.json"


class StagedOutput:
    """Files that appear all together or not at all.

    ``stage`` writes each file under a hidden temporary name in its final directory; ``publish``
    renames them into place in staging order (callers stage the result JSON last, so it appears
    last); ``rollback`` removes the temporaries, the published files this call created and the
    directories it made, leaving the output location as it was, except that a file an earlier run
    left at the same name and this call replaced cannot be restored.

    Local paths are renamed with ``os.replace`` (atomic on POSIX, and fsynced first so a crash
    cannot publish an empty file). Other ObjectStoragePath schemes use the filesystem's ``mv``; a
    filesystem without one gets the data written straight to the final name at publish time,
    which object stores still expose only once the upload completed, and the JSON-last order still
    holds.
    """

    def __init__(self, on_error: Callable[[Any, BaseException], Exception]) -> None:
        self._on_error = on_error
        self._staged: list[tuple[Any, Any]] = []  # (temporary, final)
        self._created: list[Any] = []  # final paths this call brought into existence
        self._dirs: list[Any] = []  # directories this call made, deepest last

    def stage(self, final: Any, data: bytes) -> None:
        temporary = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.part"
        try:
            self._make_dirs(final.parent)
            self._staged.append((temporary, final))
            self._write(temporary, data)
        except Exception as err:
            raise self._on_error(final, err) from None

    def publish(self) -> None:
        for temporary, final in self._staged:
            try:
                existed = final.exists()
                self._move(temporary, final)
            except Exception as err:
                raise self._on_error(final, err) from None
            if not existed:
                self._created.append(final)
        self._staged.clear()

    def rollback(self) -> None:
        """Best effort: each removal is tried even if another fails; the original error wins."""
        for path in [temporary for temporary, _ in self._staged] + self._created:
            with contextlib.suppress(Exception):
                path.unlink(missing_ok=True)
        for directory in reversed(self._dirs):
            with contextlib.suppress(Exception):
                if _is_local(directory):
                    os.rmdir(directory.path)  # only succeeds when empty: never removes other files
                elif not any(directory.iterdir()):
                    directory.rmdir()
        self._staged.clear()
        self._created.clear()
        self._dirs.clear()

    def _make_dirs(self, directory: Any) -> None:
        missing = []
        while not directory.exists() and directory != directory.parent:
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            path.mkdir(parents=True, exist_ok=True)
            self._dirs.append(path)

    @staticmethod
    def _write(path: Any, data: bytes) -> None:
        if _is_local(path):
            with open(path.path, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return
        with path.open("wb") as handle:
            handle.write(data)

    @staticmethod
    def _move(temporary: Any, final: Any) -> None:
        if _is_local(final):
            os.replace(temporary.path, final.path)
            return
        try:
            temporary.fs.mv(temporary.path, final.path)
        except NotImplementedError:
            StagedOutput._write(final, temporary.read_bytes())
            temporary.unlink(missing_ok=True)


def _is_local(path: Any) -> bool:
    return str(getattr(path, "protocol", "") or "file") in ("file", "local")


def unwritable(path: Any, err: BaseException) -> ResultShapeError:
    return ResultShapeError(
        f"Cannot write {path}: {type(err).__name__}: {err}. Check that output_path points at a "
        "writable location and that its connection (if any) has write access."
    )


def _download_all(
    result: Any, target: _Target, timeout: float, output: StagedOutput, fetch: MediaFetch | None
) -> list[dict[str, Any]]:
    """Copy each media file and point its ``url`` at the copy (the original stays in ``fal_url``).

    The copies are only staged here; ``persist_result`` publishes them once every one arrived."""
    copied: list[dict[str, Any]] = []
    for index, (field, media) in enumerate(list(iter_media(result))):
        original = str(media["url"])
        try:
            data, content_type = _fetch(original, timeout, fetch)
        except (FalError, ValueError) as err:
            shown = original if not original.startswith("data:") else "data: URI"
            raise ResultShapeError(f"Cannot download fal media {shown} at {field}: {err}") from None
        dest = target.media_dir / _media_name(index, media, content_type)
        output.stage(dest, data)
        media["fal_url"] = original if not original.startswith("data:") else None
        media["url"] = str(dest)
        copied.append({"field": field, "path": str(dest), "bytes": len(data), "content_type": content_type})
    return copied


def persist_result(
    result: Any,
    output_path: Any,
    *,
    download_media: bool = False,
    request_id: str | None = None,
    timeout: float = 120.0,
    fetch: MediaFetch | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Write the full result (and optionally its media) to ``output_path``, all or nothing.

    Every file is first staged under a temporary name and published only after all of them were
    written, media first and the result JSON last: a reader that sees the JSON finds every file it
    names complete, and a failure (download, write, crash) leaves no partial or orphaned output
    from this call (see :class:`StagedOutput`).

    Returns the (possibly URL-rewritten) result and a small manifest describing what was written.
    ``fetch`` downloads each media URL (pass the task's ``hook.fetch_media`` to reuse its client);
    either way the download never carries the API key.
    """
    target = _target(output_path, request_id)
    result = json.loads(json.dumps(result))  # a private copy: URLs are rewritten in place
    output = StagedOutput(on_error=unwritable)
    try:
        media = _download_all(result, target, timeout, output, fetch) if download_media else []
        body = json.dumps(result, indent=2, sort_keys=True).encode()
        output.stage(target.result_file, body)
        output.publish()
    except BaseException:
        output.rollback()
        raise
    manifest: dict[str, Any] = {
        "result_path": str(target.result_file),
        "result_bytes": len(body),
        "media_count": len(media) if download_media else sum(1 for _ in iter_media(result)),
        "media_downloaded": download_media,
        "media": media,
        "media_bytes": sum(item["bytes"] for item in media),
        "request_id": request_id,
    }
    return result, manifest


# --------------------------------------------------------------------------- entry point


def too_large_message(size: int, max_xcom_bytes: int, *, at_least: bool = False) -> str:
    """Why a result cannot go to XCom, and the two ways out."""
    measured = f"at least {size}" if at_least else str(size)
    return (
        f"The fal result is {measured} bytes, over the XCom limit of {max_xcom_bytes} bytes "
        "(max_xcom_bytes). Set select=... to keep only the fields downstream tasks need "
        "(e.g. select='images.0.url'), or output_path=... to write the full result to storage "
        "and return a small manifest."
    )


def check_xcom_size(value: Any, max_xcom_bytes: int | None) -> int:
    """Return the JSON size of ``value``; refuse it when over the limit (``None``/``<=0``: no limit)."""
    try:
        size = len(json.dumps(value, default=str).encode())
    except (TypeError, ValueError) as err:
        raise ResultShapeError(f"The fal result is not JSON-serialisable: {err}") from None
    if max_xcom_bytes and max_xcom_bytes > 0 and size > max_xcom_bytes:
        raise ResultTooLargeError(too_large_message(size, max_xcom_bytes))
    return size


def fetch_limit(select: Any, output_path: Any, max_xcom_bytes: int | None) -> int | None:
    """How many bytes of a result may be read at all: the XCom limit when all of it goes to XCom.

    With ``select`` or ``output_path`` the whole result must be readable (the value that reaches
    XCom is smaller), so there is no limit on reading.
    """
    if select is not None or output_path is not None or not max_xcom_bytes or max_xcom_bytes <= 0:
        return None
    return max_xcom_bytes


def shape_result(
    result: Any,
    *,
    select: str | Sequence[str] | None = None,
    output_path: Any = None,
    download_media: bool = False,
    max_xcom_bytes: int | None = DEFAULT_MAX_XCOM_BYTES,
    request_id: str | None = None,
    timeout: float = 120.0,
    fetch: MediaFetch | None = None,
) -> Any:
    """Apply the result rules and return the value to push to XCom.

    * nothing set: the result as fal returned it (size-checked);
    * ``select``: only the named field(s);
    * ``output_path``: the full result is written there (media copied with ``download_media``) and
      the return value is a manifest; with ``select`` too, the manifest carries the selected values
      under ``selected`` (after URL rewriting, so they point at the copies).
    """
    if download_media and output_path is None:
        raise ResultShapeError("download_media=True needs output_path=... (where to copy the media files)")
    if output_path is not None:
        result, manifest = persist_result(
            result,
            output_path,
            download_media=download_media,
            request_id=request_id,
            timeout=timeout,
            fetch=fetch,
        )
        if select is not None:
            manifest["selected"] = select_fields(result, select)
        check_xcom_size(manifest, max_xcom_bytes)
        return manifest
    value = select_fields(result, select) if select is not None else result
    check_xcom_size(value, max_xcom_bytes)
    return value


# ---------------------------------------------------------------------------
# Checking the rules: at parse time and again after rendering
# The result rules of every model-output operator (``select``, ``output_path``, ``download_media``,
# ``max_xcom_bytes``), checked at parse time and again after rendering, before anything is paid for.
#
# Generic checks (numbers, headers, templating) live in :mod:`fal_provider.models`; the submit's own
# inputs in :mod:`fal_provider.operators.fal`.
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Applying the rules to a list of outputs (realtime, collect="all")
# The result rules (select, output_path, download_media, max_xcom_bytes) for operators whose
# result is a list of outputs (realtime) or events (``collect="all"``), and the file stem per task.
# ---------------------------------------------------------------------------

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
