"""The queue engine: per-app FIFO with priorities, runner slots, cancel and start deadlines.

Every state change replaces the request's ``changed`` event so status streams wake up exactly
when there is something new to say.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fal_provider.emulator.apps import AppResponse, EmulatedApp, InputError, RunContext
from fal_provider.emulator.apps.base import now_iso

logger = logging.getLogger(__name__)

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"


@dataclass
class QueuedRequest:
    """One queue request and everything the status, result and debug views need."""

    request_id: str
    endpoint_id: str
    app: EmulatedApp
    path: str
    arguments: Any
    base_url: str
    headers: dict[str, str]
    priority: str = "normal"
    webhook_url: str | None = None
    start_timeout: float | None = None
    state: str = IN_QUEUE
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    response: AppResponse | None = None
    error: str | None = None
    error_type: str | None = None
    cancelled: bool = False
    task: asyncio.Task[None] | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    webhook_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return self.app.app_id

    def touch(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()

    def add_log(self, message: str, level: str = "INFO") -> None:
        self.logs.append({"message": message, "level": level, "source": "USER", "timestamp": now_iso()})
        self.touch()

    def debug_view(self) -> dict[str, Any]:
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        lowered = {k.lower(): v for k, v in headers.items()}
        return {
            "request_id": self.request_id,
            "endpoint_id": self.endpoint_id,
            "app_id": self.app_id,
            "path": self.path,
            "state": self.state,
            "arguments": self.arguments,
            "headers": headers,
            "priority": self.priority,
            "webhook_url": self.webhook_url,
            "options": {
                "runner_hint": lowered.get("x-fal-runner-hint"),
                "queue_priority": lowered.get("x-fal-queue-priority"),
                "request_timeout": lowered.get("x-fal-request-timeout"),
                "request_start_timeout": lowered.get("x-fal-request-start-timeout"),
                "no_retry": lowered.get("x-fal-no-retry"),
                "store_io": lowered.get("x-fal-store-io"),
                "object_lifecycle_preference": lowered.get("x-fal-object-lifecycle-preference"),
                "disable_fallback": lowered.get("x-app-fal-disable-fallback"),
            },
            "timings": {
                "submitted_at": self.submitted_at,
                "started_at": self.started_at,
                "completed_at": self.completed_at,
            },
            "error": self.error,
            "error_type": self.error_type,
            "result_status_code": self.response.status_code if self.response else None,
            "logs": self.logs,
            "webhook_events": self.webhook_events,
        }


class AppQueue:
    """Waiting requests of one app, normal before low, plus its running count."""

    def __init__(self) -> None:
        self.normal: deque[QueuedRequest] = deque()
        self.low: deque[QueuedRequest] = deque()
        self.running = 0

    def waiting(self) -> int:
        return len(self.normal) + len(self.low)

    def position(self, request: QueuedRequest) -> int:
        if request in self.normal:
            return self.normal.index(request)
        if request in self.low:
            return len(self.normal) + self.low.index(request)
        return 0

    def remove(self, request: QueuedRequest) -> None:
        for lane in (self.normal, self.low):
            if request in lane:
                lane.remove(request)

    def pop(self) -> QueuedRequest | None:
        if self.normal:
            return self.normal.popleft()
        if self.low:
            return self.low.popleft()
        return None

    def all_waiting(self) -> list[QueuedRequest]:
        return [*self.normal, *self.low]


class QueueFull(Exception):
    pass


RESULT_ERRORS = {
    "client_cancelled": (499, "Request was cancelled"),
    "startup_timeout": (504, "Request timed out before processing started"),
    "internal_error": (500, "Internal error in the emulated app"),
}


def infrastructure_error(error_type: str, **extra_headers: str) -> AppResponse:
    status, detail = RESULT_ERRORS[error_type]
    headers = {"X-Fal-Error-Type": error_type, **extra_headers}
    return AppResponse(status, {"detail": detail, "error_type": error_type}, headers)


class QueueEngine:
    """Owns every request; must be used from the emulator's event loop only."""

    def __init__(
        self,
        concurrency_for: Callable[[str], int],
        make_context: Callable[[QueuedRequest], RunContext],
        on_complete: Callable[[QueuedRequest], None],
        account_limit: Callable[[], int | None] = lambda: None,
        latency_for: Callable[[str, random.Random], float] = lambda app_id, rng: 0.0,
    ) -> None:
        self._concurrency_for = concurrency_for
        self._account_limit = account_limit
        self._latency_for = latency_for
        self._rng = random.Random(0)
        #: Submitted and not completed (queued or running), and the most there ever were at once.
        self.outstanding = 0
        self.peak_outstanding = 0
        self._make_context = make_context
        self._on_complete = on_complete
        self.requests: dict[str, QueuedRequest] = {}
        self.queues: dict[str, AppQueue] = {}

    def submit(self, request: QueuedRequest, max_queue_length: int | None = None) -> None:
        queue = self.queues.setdefault(request.app_id, AppQueue())
        if max_queue_length is not None and queue.waiting() >= max_queue_length:
            raise QueueFull(f"Queue of {request.app_id} already has {queue.waiting()} waiting requests")
        self.requests[request.request_id] = request
        self.outstanding += 1
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        (queue.low if request.priority == "low" else queue.normal).append(request)
        if request.start_timeout is not None:
            loop = asyncio.get_running_loop()
            request.timeout_handle = loop.call_later(request.start_timeout, self._start_expired, request)
        self.pump(request.app_id)

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def position(self, request: QueuedRequest) -> int:
        return self.queues[request.app_id].position(request)

    def account_has_room(self) -> bool:
        """fal's account limit counts only running requests; the rest wait IN_QUEUE."""
        limit = self._account_limit()
        return limit is None or sum(q.running for q in self.queues.values()) < limit

    def pump(self, app_id: str) -> None:
        """Start waiting requests while the app has free runner slots (and the account has room)."""
        queue = self.queues.get(app_id)
        if queue is None:
            return
        started = False
        while queue.running < self._concurrency_for(app_id) and self.account_has_room():
            request = queue.pop()
            if request is None:
                break
            started = True
            queue.running += 1
            request.state = IN_PROGRESS
            request.started_at = time.time()
            if request.timeout_handle is not None:
                request.timeout_handle.cancel()
            request.task = asyncio.create_task(self._run(request))
            request.touch()
        if started:
            for waiting in queue.all_waiting():
                waiting.touch()

    def pump_all(self) -> None:
        for app_id in list(self.queues):
            self.pump(app_id)

    async def _run(self, request: QueuedRequest) -> None:
        context = self._make_context(request)
        try:
            extra = self._latency_for(request.app_id, self._rng)
            if extra > 0:
                await asyncio.sleep(extra)
            response = await request.app.call(context, request.arguments, request.path)
        except asyncio.CancelledError:
            if request.state != COMPLETED:
                self._finish(request, infrastructure_error("client_cancelled"))
            self._release(request)
            raise
        except InputError as exc:
            response = exc.response()
        except Exception:
            logger.exception("emulated app %s crashed", request.app_id)
            response = infrastructure_error("internal_error")
        if request.state != COMPLETED:
            self._finish(request, response)
        self._release(request)

    def _release(self, request: QueuedRequest) -> None:
        queue = self.queues.get(request.app_id)
        if queue is not None and request.started_at is not None and request.task is not None:
            request.task = None
            queue.running -= 1
            self.pump(request.app_id)
            if self._account_limit() is not None:
                self.pump_all()  # a freed account slot may start another app's request

    def _finish(self, request: QueuedRequest, response: AppResponse) -> None:
        if request.state != COMPLETED:
            self.outstanding -= 1
        request.response = response
        request.state = COMPLETED
        request.completed_at = time.time()
        if not response.ok:
            body = response.body if isinstance(response.body, dict) else {}
            detail = body.get("detail")
            request.error = (
                detail if isinstance(detail, str) else f"Invalid status code: {response.status_code}"
            )
            request.error_type = body.get("error_type") or _header(response, "x-fal-error-type")
            if request.error_type is None and isinstance(detail, list) and detail:
                request.error_type = detail[0].get("type")
        request.touch()
        self._on_complete(request)

    def _start_expired(self, request: QueuedRequest) -> None:
        if request.state != IN_QUEUE:
            return
        self.queues[request.app_id].remove(request)
        self._finish(
            request, infrastructure_error("startup_timeout", **{"X-Fal-Request-Timeout-Type": "user"})
        )
        for waiting in self.queues[request.app_id].all_waiting():
            waiting.touch()

    def cancel(self, request: QueuedRequest) -> bool:
        """False when already completed; otherwise the request ends now as ``client_cancelled``."""
        if request.state == COMPLETED:
            return False
        request.cancelled = True
        if request.state == IN_QUEUE:
            self.queues[request.app_id].remove(request)
            if request.timeout_handle is not None:
                request.timeout_handle.cancel()
            self._finish(request, infrastructure_error("client_cancelled"))
            for waiting in self.queues[request.app_id].all_waiting():
                waiting.touch()
        else:
            self._finish(request, infrastructure_error("client_cancelled"))
            if request.task is not None:
                request.task.cancel()
        return True

    def counts_by_state(self) -> dict[str, int]:
        counts = Counter(request.state for request in self.requests.values())
        return {state: counts.get(state, 0) for state in (IN_QUEUE, IN_PROGRESS, COMPLETED)}

    async def clear(self) -> None:
        # Empty the lanes first: a cancelled runner frees its slot, and must not start a waiting request.
        for queue in self.queues.values():
            queue.normal.clear()
            queue.low.clear()
        tasks = []
        for request in self.requests.values():
            if request.timeout_handle is not None:
                request.timeout_handle.cancel()
            if request.task is not None:
                request.state = COMPLETED
                request.task.cancel()
                tasks.append(request.task)
            request.touch()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.requests.clear()
        self.queues.clear()
        self.outstanding = self.peak_outstanding = 0
        self._rng = random.Random(0)


def _header(response: AppResponse, name: str) -> str | None:
    for key, value in response.headers.items():
        if key.lower() == name:
            return value
    return None
