"""When an HTTP call to fal may be repeated, and how long to wait before repeating it.

Two policies exist because two kinds of call exist:

* Idempotent calls (status, result, cancel, realtime tokens, uploads) can be sent again without
  harm, so they retry on any transport error, 408, 429 and gateway/ingress 502/503/504.
* Calls that start paid work (the queue submit POST, a sync ``run`` or ``/stream`` POST) retry only
  where fal cannot have accepted the request: the connection was never established, a 429, or an
  ingress 503 (no ``x-fal-request-id``: the gateway never saw it). A read timeout or a 500 after the
  body was sent may mean fal queued the request; sending it again would run, and bill, it twice.
  Airflow-level reattachment (the task stores the request id) handles those cases instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity

from fal_provider.exceptions import parse_retry_after

#: Status codes a gateway in front of fal answers without the request reaching fal.
INGRESS_CODES = frozenset({502, 503, 504})
#: How the retry loops wait (module-level, so one place decides how a retry sleeps).
sleep: Callable[[float], None] = time.sleep


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class RetryableResponse(Exception):
    """Internal signal: an HTTP answer that the policy says to try again."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = parse_retry_after(response.headers)


def is_ingress_error(response: httpx.Response) -> bool:
    """A 502/503/504 that did not come from fal's gateway (it always tags its answers)."""
    headers = response.headers
    return (
        response.status_code in INGRESS_CODES
        and "x-fal-request-id" not in headers
        and "x-fal-error-type" not in headers
    )


def _user_timeout(response: httpx.Response) -> bool:
    return response.status_code == 504 and bool(response.headers.get("x-fal-request-timeout-type"))


def _idempotent_response(response: httpx.Response) -> bool:
    if _user_timeout(response):
        return False
    return response.status_code in (408, 429) or is_ingress_error(response)


def _idempotent_exception(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError)


def _submit_response(response: httpx.Response) -> bool:
    return response.status_code == 429 or (response.status_code == 503 and is_ingress_error(response))


def _submit_exception(exc: BaseException) -> bool:
    # Only failures before a single byte reached fal: no TCP/TLS connection, or no free pool slot.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


@dataclass(frozen=True)
class RetryPolicy:
    name: str
    retry_response: Callable[[httpx.Response], bool]
    retry_exception: Callable[[BaseException], bool]

    def should_retry(self, exc: BaseException | None) -> bool:
        if isinstance(exc, RetryableResponse):
            return True
        return exc is not None and self.retry_exception(exc)


IDEMPOTENT = RetryPolicy("idempotent", _idempotent_response, _idempotent_exception)
SUBMIT = RetryPolicy("submit", _submit_response, _submit_exception)
NO_RETRY = RetryPolicy("none", lambda _response: False, lambda _exc: False)


class BackoffWithRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with jitter; a server's ``Retry-After`` wins (capped at ``max_wait``)."""

    def __init__(self, min_wait: float, max_wait: float) -> None:
        self.min_wait = min_wait
        self.max_wait = max_wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RetryableResponse) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        base = self.min_wait * (2 ** (retry_state.attempt_number - 1))
        return min(self.max_wait, base * random.uniform(0.5, 1.5))


def describe(exc: BaseException | None) -> str:
    if isinstance(exc, RetryableResponse):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


def _before_sleep(
    log: logging.Logger | Any, label: str, limit: int
) -> Callable[[tenacity.RetryCallState], None]:
    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "fal %s failed (%s); attempt %d of %d, retrying in %.2f s",
            label,
            describe(exc),
            state.attempt_number,
            limit,
            wait,
        )

    return log_retry


def _common(policy: RetryPolicy, limit: int, min_wait: float, max_wait: float, log: Any, label: str) -> dict:
    return {
        "retry": tenacity.retry_if_exception(policy.should_retry),
        "stop": tenacity.stop_after_attempt(max(1, limit)),
        "wait": BackoffWithRetryAfter(min_wait, max_wait),
        "before_sleep": _before_sleep(log, label, limit),
        "reraise": True,
    }


def sync_retrying(
    policy: RetryPolicy, *, limit: int, min_wait: float, max_wait: float, log: Any, label: str
) -> tenacity.Retrying:
    return tenacity.Retrying(
        sleep=lambda seconds: sleep(seconds), **_common(policy, limit, min_wait, max_wait, log, label)
    )


def async_retrying(
    policy: RetryPolicy, *, limit: int, min_wait: float, max_wait: float, log: Any, label: str
) -> tenacity.AsyncRetrying:
    return tenacity.AsyncRetrying(
        sleep=lambda seconds: asleep(seconds), **_common(policy, limit, min_wait, max_wait, log, label)
    )
