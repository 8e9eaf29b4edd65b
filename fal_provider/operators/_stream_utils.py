"""Small pieces shared by the streaming and realtime operators.

They are kept free of Airflow and of the network so the rules that matter most (what counts as an
error event, how a realtime batch survives a dropped session, how much goes to the task log) can
be tested in isolation.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgpack

from fal_provider.exceptions import (
    PERMANENT_ERROR_TYPES,
    FalError,
    FalInputError,
    FalPermanentRequestFailed,
    FalRequestFailed,
)
from fal_provider.results import check_xcom_size, persist_result, select_fields

# --------------------------------------------------------------------------- task log


class _InfoLog(Protocol):
    def info(self, event: Any, *args: Any, **kw: Any) -> Any: ...


class RateLimitedLog:
    """Writes at most one progress line per ``interval`` seconds.

    A chatty stream (an LLM sends one event per token) would otherwise bury the task log. Lines
    that are held back are counted, and the next line that gets through says how many were
    skipped, so the log still tells the whole story. ``interval <= 0`` logs every line.
    """

    def __init__(
        self, log: _InfoLog, interval: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._interval = max(0.0, float(interval))
        self._clock = clock
        self._last: float | None = None
        self.skipped = 0
        self.written = 0

    def offer(self, line: Callable[[], str], *, force: bool = False) -> bool:
        """Log ``line()`` unless a line went out less than ``interval`` ago; ``line`` is lazy.

        ``force`` is for lines that must never be swallowed (a reconnect, a warning).
        """
        now = self._clock()
        if not force and self._last is not None and now - self._last < self._interval:
            self.skipped += 1
            return False
        text = line()
        if self.skipped:
            text = f"{text} (+{self.skipped} earlier update(s) not shown)"
        self._log.info("%s", text)
        self._last = now
        self.skipped = 0
        self.written += 1
        return True


def preview(value: Any, limit: int = 200) -> str:
    """A one-line, bounded rendering of an event or output for the task log."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


# --------------------------------------------------------------------------- stream events


def error_in_event(event: Any) -> tuple[str, str | None, bool | None] | None:
    """``(message, error_type, retryable)`` if a stream event reports an app error, else ``None``.

    fal does not fix an event schema, so this recognises the shapes apps actually send: a truthy
    ``error`` field (``{"error": "...", "error_type": "..."}``; LLM apps send ``"error": null`` on
    good events, which is not an error) and the workflow endpoints' ``{"type": "error", ...}``.
    ``retryable`` is the app's own verdict when it gives one (``retryable`` field), else ``None``.
    """
    if not isinstance(event, Mapping):
        return None
    error = event.get("error")
    if not error and event.get("type") != "error":
        return None
    error_type = event.get("error_type")
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("msg") or error.get("detail") or preview(error, 500)
        error_type = error_type or error.get("type") or error.get("error_type")
    elif error:
        message = error if isinstance(error, str) else preview(error, 500)
    else:
        message = event.get("message") or event.get("detail") or preview(event, 500)
    retryable = event.get("retryable")
    return (
        str(message),
        (str(error_type) if error_type else None),
        (retryable if isinstance(retryable, bool) else None),
    )


def stream_error_from_event(app_id: str, event: Any, index: int) -> FalError | None:
    """The error to raise for an error event: permanent when the app or its error type says so."""
    found = error_in_event(event)
    if found is None:
        return None
    message, error_type, retryable = found
    text = f"fal stream from {app_id} reported an error at event {index}"
    text += f" ({error_type})" if error_type else ""
    text += f": {message}"
    permanent = retryable is False or (retryable is None and error_type in PERMANENT_ERROR_TYPES)
    cls = FalPermanentRequestFailed if permanent else FalRequestFailed
    return cls(text, error_type=error_type, detail=dict(event))


def name_the_app(err: FalError, app_id: str, doing: str) -> FalError:
    """Return ``err`` with a message that names the app, keeping its class (and so its retry verdict).

    The hook's messages usually name the app already; when one does not, the task log would say
    what broke but not where, which is the first thing a user needs with several fal tasks.
    """
    if app_id in str(err):
        return err
    message = f"{doing} {app_id} failed: {err}"
    clone = type(err).__new__(type(err))
    Exception.__init__(clone, message)
    clone.__dict__.update(err.__dict__)
    clone.message = message
    return clone


# --------------------------------------------------------------------------- realtime inputs


def check_msgpack_inputs(app_id: str, inputs: Sequence[Any]) -> None:
    """Fail before connecting if any input is not a mapping msgpack can encode.

    Finding it mid-batch would waste a session and leave the batch half sent; the error names the
    input's index and the offending value's location and type so the DAG author can fix it.
    """
    for index, item in enumerate(inputs):
        if not isinstance(item, Mapping):
            raise FalInputError(
                f"Realtime input #{index} for {app_id} must be a mapping (a dict of the app's input "
                f"fields), got {type(item).__name__}"
            )
        try:
            msgpack.packb(item, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as err:
            where, kind = _find_unencodable(item, f"inputs[{index}]")
            raise FalInputError(
                f"Realtime input #{index} for {app_id} cannot be msgpack-encoded: {where} is a {kind} "
                f"({err}). Convert it to str/int/float/bool/bytes/list/dict first."
            ) from None


def _find_unencodable(value: Any, where: str) -> tuple[str, str]:
    """Walk down to the innermost value msgpack refuses, so the error points at it."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not _encodes(key):
                return f"{where} key {key!r}", _type_name(key)
            if not _encodes(item):
                return _find_unencodable(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            if not _encodes(item):
                return _find_unencodable(item, f"{where}[{position}]")
    return where, _type_name(value)


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _encodes(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


# --------------------------------------------------------------------------- realtime bookkeeping

_MISSING: Any = object()


class BatchLedger:
    """Which realtime inputs have an output, which are in flight, which still need sending.

    Realtime frames carry no request id, so outputs are matched to inputs by order *within one
    session*: the app answers each message once, in the order received. When a session drops,
    messages in flight may or may not have been processed, but their answers are gone with the
    socket, so :meth:`session_lost` puts them back at the front of the queue, in order, to be sent
    again on the next session. Each input therefore gets exactly one output (the app may have
    processed a resent input twice; only one answer is kept).
    """

    def __init__(self, size: int) -> None:
        self.outputs: list[Any] = [_MISSING] * size
        self._unsent: deque[int] = deque(range(size))
        self._in_flight: deque[int] = deque()
        self.resent = 0

    @property
    def done(self) -> bool:
        return not self._unsent and not self._in_flight

    @property
    def completed(self) -> int:
        return len(self.outputs) - len(self._unsent) - len(self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def oldest_in_flight(self) -> int | None:
        return self._in_flight[0] if self._in_flight else None

    def next_to_send(self, max_in_flight: int) -> int | None:
        """The index to send now, or ``None`` when the window is full or nothing is left."""
        if not self._unsent or len(self._in_flight) >= max_in_flight:
            return None
        return self._unsent[0]

    def sent(self, index: int) -> None:
        if not self._unsent or self._unsent[0] != index:
            raise RuntimeError(f"realtime input #{index} sent out of order")
        self._in_flight.append(self._unsent.popleft())

    def received(self, output: Any) -> int:
        """Assign ``output`` to the oldest input in flight and return that input's index."""
        if not self._in_flight:
            raise RuntimeError("realtime app sent an output with no input in flight")
        index = self._in_flight.popleft()
        self.outputs[index] = output
        return index

    def session_lost(self) -> int:
        """Requeue the inputs whose answers died with the session; return how many."""
        lost = len(self._in_flight)
        self._unsent.extendleft(reversed(self._in_flight))
        self._in_flight.clear()
        self.resent += lost
        return lost

    def results(self) -> list[Any]:
        if not self.done:
            raise RuntimeError("realtime batch is not finished")
        return list(self.outputs)


# --------------------------------------------------------------------------- result rules


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
        items, output_path, download_media=download_media, request_id=name, timeout=timeout
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
