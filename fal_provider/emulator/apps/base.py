"""What an emulated app is, and the context it runs in.

Apps are plain objects with an async ``call``; they know nothing about queues or HTTP, so the
same app serves the queue, ``/run``, ``/stream`` and realtime paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fal_provider.emulator.cdn import FileStore
    from fal_provider.emulator.config import EmulatorConfig


@dataclass
class AppResponse:
    """The HTTP answer of a model: status, JSON body and headers, passed through by the gateway."""

    status_code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    # Set when the output "cannot be serialised" so the webhook carries fal's payload_error shape.
    webhook_payload_error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


class StreamAbort(Exception):
    """Raised by a stream to make the server drop the connection without finishing the response."""


class InputError(Exception):
    """Validation failure carrying fal's 422 ``detail`` list."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("invalid input")
        self.details = details

    def response(self) -> AppResponse:
        return AppResponse(422, {"detail": self.details}, {"X-Fal-Retryable": "false"})


def field_error(name: str, msg: str, type_: str, value: Any = None, **ctx: Any) -> dict[str, Any]:
    """One fal/pydantic-style error item."""
    item: dict[str, Any] = {
        "loc": ["body", name],
        "msg": msg,
        "type": type_,
        "url": f"https://docs.fal.ai/errors/#{type_}",
    }
    if value is not None:
        item["input"] = value
    if ctx:
        item["ctx"] = ctx
    return item


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


LogSink = Callable[[str, str], None]


class RunContext:
    """What an app may touch while running: logs, scaled sleeps, the CDN and file fetching."""

    def __init__(
        self,
        *,
        request_id: str,
        base_url: str,
        config: EmulatorConfig,
        files: FileStore,
        log_sink: LogSink | None = None,
        fetcher: Callable[[str], Awaitable[tuple[bytes, str]]] | None = None,
    ) -> None:
        self.request_id = request_id
        self.base_url = base_url
        self.config = config
        self.files = files
        self._log_sink = log_sink
        self._fetcher = fetcher

    def log(self, message: str, level: str = "INFO") -> None:
        if self._log_sink is not None:
            self._log_sink(message, level)

    async def sleep(self, seconds: float, *, scaled: bool = True) -> None:
        """Model "work"; scaled by ``latency_scale`` so whole test suites can be sped up."""
        delay = seconds * (self.config.latency_scale if scaled else 1.0)
        if delay > 0:
            await asyncio.sleep(delay)

    def store_file(self, data: bytes, content_type: str, file_name: str) -> str:
        return self.files.put(data, content_type, file_name, self.base_url)

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """Bytes and content type of an input file URL (emulator CDN, ``data:`` URI or HTTP)."""
        if self._fetcher is None:
            raise RuntimeError("no fetcher configured")
        return await self._fetcher(url)


class EmulatedApp:
    """Base class: override ``call``; set ``has_stream`` / ``has_realtime`` and their methods."""

    app_id: str = ""
    description: str = ""
    has_stream: bool = False
    has_realtime: bool = False

    async def call(self, ctx: RunContext, arguments: dict[str, Any], path: str) -> AppResponse:
        raise NotImplementedError

    def stream(self, ctx: RunContext, arguments: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError

    async def realtime_reply(self, ctx: RunContext, message: Any) -> Any:
        """Answer to one realtime message; only for apps with ``has_realtime``."""
        raise NotImplementedError


def as_number(
    arguments: dict[str, Any],
    name: str,
    default: float,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float:
    """A numeric input with fal-like validation errors."""
    value = arguments.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError([field_error(name, "Input should be a valid number", "float_parsing", value)])
    check_range(name, value, minimum, maximum)
    return float(value)


def as_int(
    arguments: dict[str, Any], name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    value = arguments.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError([field_error(name, "Input should be a valid integer", "int_parsing", value)])
    check_range(name, value, minimum, maximum)
    return value


def check_range(name: str, value: float, minimum: float, maximum: float | None) -> None:
    """pydantic's ``ge``/``le`` errors, with the bound in ``ctx`` as fal reports it."""
    if value < minimum:
        msg = f"Input should be greater than or equal to {minimum}"
        raise InputError([field_error(name, msg, "greater_than_equal", value, ge=minimum)])
    if maximum is not None and value > maximum:
        msg = f"Input should be less than or equal to {maximum}"
        raise InputError([field_error(name, msg, "less_than_equal", value, le=maximum)])


def require_str(arguments: dict[str, Any], name: str) -> str:
    if name not in arguments:
        raise InputError([field_error(name, "Field required", "missing")])
    value = arguments[name]
    if not isinstance(value, str):
        raise InputError([field_error(name, "Input should be a valid string", "string_type", value)])
    return value
