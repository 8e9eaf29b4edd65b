"""Where a batch keeps its journal and its outputs: append-only JSONL parts on any ObjectStoragePath.

Layout of one batch (one task of one DAG run; a retry or a clear of that task finds the same folder,
a new DAG run gets a new one)::

    <output_path>/<run_id>/<task_id>[.<map_index>]/
        journal/journal-<try>-<writer>[-<seq>].jsonl   intent / submitted / outcome records
        parts/results-<try>-<writer>[-<seq>].jsonl     one line per item, as soon as it finished
        parts/failed-<try>-<writer>[-<seq>].jsonl      the input of every item without a result
        results.jsonl, failed_inputs.jsonl     assembled at the end, one line per input index
        manifest.json                          what the task returned to XCom

Local filesystems are appended to (each record is on disk, in the page cache, before the next call
is made, so a SIGKILL loses nothing). Object stores cannot append: records are buffered and written
as a new small part on each :meth:`Part.sync`, which the engine calls before every POST it is about
to make (intents) and after each answer it must not lose (request ids, results).
Every process writes its own files (``<writer>`` is its start time and a random tag), so a try that
follows a killed one, even with the same try number (``airflow dags test`` recreates the run),
never writes into a file the dead one left. Readers skip a torn last line, the only damage a kill
mid-write can do.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_segment(value: str) -> str:
    """A run id or task id as one path segment (``:`` and ``/`` in run ids are not portable)."""
    return _SAFE.sub("_", value).strip("._") or "_"


def batch_folder(output_path: Any, run_id: str, task_id: str, map_index: int) -> Any:
    name = safe_segment(task_id) + (f".{map_index}" if map_index >= 0 else "")
    return output_path / safe_segment(run_id) / name


def is_local(path: Any) -> bool:
    protocol = getattr(getattr(path, "fs", None), "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols


def dumps(record: Any) -> bytes:
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


class Part:
    """One append-only JSONL stream of this try and process, named ``<prefix>-<try>-<writer>``."""

    def __init__(self, folder: Any, prefix: str, try_number: int) -> None:
        self.folder = folder
        writer = f"{time.time_ns() // 1_000_000:013d}{secrets.token_hex(2)}"
        self.name = f"{prefix}-{try_number:04d}-{writer}"
        self.local = is_local(folder)
        self._buffer: list[bytes] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._handle: Any = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, record: Any) -> None:
        line = dumps(record)
        with self._lock:
            if self.local:
                if self._handle is None:
                    self._handle = (self.folder / f"{self.name}.jsonl").open("ab")
                self._handle.write(line)
                self._handle.flush()
            else:
                self._buffer.append(line)

    def sync(self) -> None:
        """Make what was written durable (a no-op for local files, which are written at once)."""
        with self._lock:
            if self.local or not self._buffer:
                return
            data, self._buffer = b"".join(self._buffer), []
            self._seq += 1
            (self.folder / f"{self.name}-{self._seq:06d}.jsonl").write_bytes(data)

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def read_parts(folder: Any, prefix: str) -> Iterator[dict[str, Any]]:
    """Every record of every part named ``<prefix>-*``, oldest try first; torn lines skipped."""
    if not folder.exists():
        return
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix + "-"))
    for name in names:
        with (folder / name).open("rb") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record


def check_writable(folder: Any) -> None:
    """Write and delete a probe file, so a bad output path fails before anything is paid for."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".write-probe"
    probe.write_bytes(b"ok")
    probe.unlink()
