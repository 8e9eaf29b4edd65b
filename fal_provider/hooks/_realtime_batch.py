"""A batch of inputs through fal realtime sessions, surviving dropped sessions by resending.

Realtime frames carry no request id, so **outputs are matched to inputs by order within a
session**: the app answers every message exactly once, in the order it received them (true of
fal's realtime apps, which process a connection's messages one after another). A window above one
message (``max_in_flight``) pipelines messages and relies on that.

When a session drops mid-batch the answers to the messages in flight are lost with it, so a new
session (with a fresh token) is opened and those inputs are sent again: no input is lost and each
gets exactly one output, though the app may have processed a resent input twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from fal_provider.exceptions import (
    FalConnectionError,
    FalError,
    FalRealtimeError,
    FalStreamError,
    FalTimeoutError,
)
from fal_provider.hooks._calls import check_msgpack

#: fal's realtime server closes an idle session with this ``x-fal-error``; a reconnect is the cure.
_IDLE_ERRORS = frozenset({"TIMEOUT"})


class RealtimeSessionLike(Protocol):
    """What the batch needs from ``FalHook.arealtime()``'s session."""

    async def send(self, message: Mapping[str, Any]) -> None: ...

    async def recv(self, timeout: float | None = None) -> Any: ...


class Progress(Protocol):
    """Where progress lines go (the operators' rate-limited task log)."""

    def offer(self, line: Callable[[], str], *, force: bool = False) -> bool: ...


SessionFactory = Callable[[], AbstractAsyncContextManager[Any]]


class SessionDropped(Exception):
    """Internal signal: the session ended under us and may be reopened."""


def is_session_drop(err: BaseException) -> bool:
    """Whether ``err`` means "the socket went away" (reconnect) rather than "the app said no".

    ``x-fal-error`` frames are the app's verdict and end the batch, except fal's idle ``TIMEOUT``,
    which only asks the client to reconnect. Anything else the hook reports as a broken stream or
    connection is a drop.
    """
    if isinstance(err, FalRealtimeError):
        return err.error in _IDLE_ERRORS
    return isinstance(err, FalStreamError | FalConnectionError)


def check_msgpack_inputs(app_id: str, inputs: Sequence[Any]) -> None:
    """Fail before connecting if any input is not a mapping msgpack can encode.

    Finding it mid-batch would waste a session and leave the batch half sent; the error names the
    input's index and the offending value's location and type so the DAG author can fix it.
    """
    for index, item in enumerate(inputs):
        check_msgpack(item, app_id, what=f"input #{index}", where=f"inputs[{index}]")


_MISSING: Any = object()


class BatchLedger:
    """Which realtime inputs have an output, which are in flight, which still need sending.

    When a session drops, messages in flight may or may not have been processed, but their answers
    are gone with the socket, so :meth:`session_lost` puts them back at the front of the queue, in
    order, to be sent again on the next session. Each input therefore gets exactly one output.
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


async def run_realtime_batch(
    open_session: SessionFactory,
    inputs: Sequence[Mapping[str, Any]],
    *,
    app_id: str,
    max_in_flight: int = 1,
    message_timeout: float | None = 60.0,
    max_reconnects: int = 3,
    progress: Progress | None = None,
    reconnect_delay: float = 0.2,
) -> list[Any]:
    """Send every input through realtime sessions from ``open_session``; outputs in input order.

    ``open_session`` is called for the first session and again after each drop (each call fetches
    a fresh token), at most ``max_reconnects`` more times. ``FalHook.arealtime_batch`` calls this
    with its own ``arealtime``.
    """
    check_msgpack_inputs(app_id, inputs)
    ledger = BatchLedger(len(inputs))
    reconnects = 0
    while not ledger.done:
        try:
            async with open_session() as session:
                await _pump(session, inputs, ledger, app_id, max_in_flight, message_timeout, progress)
        except SessionDropped as dropped:
            lost = ledger.session_lost()
            reconnects += 1
            if reconnects > max_reconnects:
                raise FalStreamError(
                    f"fal realtime session to {app_id} dropped {reconnects} time(s), more than "
                    f"max_reconnects={max_reconnects}; {ledger.completed}/{len(inputs)} output(s) received. "
                    f"Last cause: {dropped.__cause__}"
                ) from dropped.__cause__
            if progress is not None:
                line = (
                    f"{app_id} realtime session dropped ({dropped.__cause__}); reconnecting with a fresh "
                    f"token and resending {lost} input(s) [{reconnects}/{max_reconnects}]"
                )
                progress.offer(lambda line=line: line, force=True)  # type: ignore[misc]
            await asyncio.sleep(min(reconnect_delay * reconnects, 2.0))
    return ledger.results()


def _verdict(err: FalError) -> Exception:
    """A drop to recover from, or the hook's (already typed) error to raise."""
    return SessionDropped() if is_session_drop(err) else err


async def _pump(
    session: RealtimeSessionLike,
    inputs: Sequence[Mapping[str, Any]],
    ledger: BatchLedger,
    app_id: str,
    max_in_flight: int,
    message_timeout: float | None,
    progress: Progress | None,
) -> None:
    """Keep up to ``max_in_flight`` messages outstanding and take answers in order until done."""
    total = len(inputs)
    while not ledger.done:
        await _fill_window(session, inputs, ledger, max_in_flight)
        waiting_for = ledger.oldest_in_flight
        try:
            output = await asyncio.wait_for(session.recv(), message_timeout)
        except asyncio.TimeoutError:
            raise FalTimeoutError(
                f"fal realtime app {app_id} sent no output for input #{waiting_for} within "
                f"message_timeout={message_timeout:g}s ({ledger.completed}/{total} output(s) received)"
            ) from None
        except FalError as err:
            raise _verdict(err) from err
        _record(ledger, output, app_id, total, progress)


async def _fill_window(
    session: RealtimeSessionLike,
    inputs: Sequence[Mapping[str, Any]],
    ledger: BatchLedger,
    max_in_flight: int,
) -> None:
    while (index := ledger.next_to_send(max_in_flight)) is not None:
        try:
            await session.send(inputs[index])
        except FalError as err:
            verdict = _verdict(err)
            if isinstance(verdict, SessionDropped):
                # The server may have said why before hanging up (an x-fal-error frame, or answers
                # still buffered); read what is left so the task reports the real cause.
                await _drain(session, ledger)
            raise verdict from err
        ledger.sent(index)


async def _drain(session: RealtimeSessionLike, ledger: BatchLedger) -> None:
    """Take buffered frames off a closing session: keep answers, raise an app error if one is there."""
    while True:
        try:
            output = await asyncio.wait_for(session.recv(), 1.0)
        except asyncio.TimeoutError:
            return
        except FalError as err:
            if is_session_drop(err):
                return
            raise
        if output is not None and ledger.in_flight:
            ledger.received(output)


def _record(ledger: BatchLedger, output: Any, app_id: str, total: int, progress: Progress | None) -> None:
    if output is None:  # a control frame the hook passed through; not an answer
        return
    ledger.received(output)
    if progress is not None:
        done = ledger.completed
        progress.offer(lambda: f"{app_id} realtime: {done}/{total} output(s)")
