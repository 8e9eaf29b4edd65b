"""What the streaming and realtime operators write to the task log: bounded, and naming the app.

A chatty stream or a large batch must not bury the log, and an error must say which app broke.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from fal_provider.exceptions import FalError


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
