"""fal's error shapes become typed errors; retries follow the idempotent vs submit policies."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from fal_provider.exceptions import (
    FalAuthError,
    FalConnectionError,
    FalContentPolicyError,
    FalNotFoundError,
    FalPermanentError,
    FalRateLimitError,
    FalRequestFailed,
    FalServerError,
    FalTimeoutError,
    FalValidationError,
    error_from_completed,
)
from fal_provider.hooks.fal import FalHook
from tests.unit.hooks.hook_fakes import Script, mock_hook, ok

REF = {"app_id": "fal-ai/flux/dev", "request_id": "r1"}
SUBMITTED = {"request_id": "r1"}
FAL = {"x-fal-request-id": "gw-1"}
INGRESS_503 = httpx.Response(503, text="<html>503 Service Temporarily Unavailable nginx</html>")


@pytest.mark.parametrize(
    ("response", "cls", "retryable"),
    [
        (
            ok(
                {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]},
                422,
                {"X-Fal-Retryable": "false"},
            ),
            FalValidationError,
            False,
        ),
        (
            ok({"detail": [{"loc": ["body"], "msg": "blocked", "type": "content_policy_violation"}]}, 422),
            FalContentPolicyError,
            False,
        ),
        (
            ok(
                {"detail": "Runner disconnected", "error_type": "runner_disconnected"},
                503,
                {"X-Fal-Error-Type": "runner_disconnected"},
            ),
            FalServerError,
            True,
        ),
        (ok({"detail": "model hiccup"}, 400, {"X-Fal-Retryable": "true"}), FalRequestFailed, True),
        (ok({"detail": "No user found for Key ID and Secret"}, 401), FalAuthError, False),
        (ok({"detail": "User is locked. Reason: Exhausted balance."}, 403), FalAuthError, False),
        (ok({"detail": "Application not found"}, 404), FalNotFoundError, False),
        (ok({"detail": "boom"}, 500, FAL), FalServerError, True),
        # fal's start timeout expired: Airflow may retry the task later, but the hook must not resend.
        (ok({"detail": "start timeout"}, 504, {"X-Fal-Request-Timeout-Type": "user"}), FalServerError, True),
    ],
)
def test_result_error_shapes_map_to_typed_errors(
    response: httpx.Response, cls: type, retryable: bool
) -> None:
    script = Script(response)
    with pytest.raises(cls) as info:
        mock_hook(script).get_result(REF)
    assert info.value.retryable is retryable
    assert isinstance(info.value, FalPermanentError) is (not retryable)
    assert script.calls == 1, "errors from fal's gateway itself are not retried by the hook"


def test_validation_error_carries_fals_detail_list() -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]
    with pytest.raises(FalValidationError) as info:
        mock_hook(Script(ok({"detail": detail}, 422))).get_result(REF)
    assert info.value.detail == detail
    assert info.value.http_status == 422
    assert "prompt" in str(info.value)


def test_completed_status_with_error_is_reported_and_mappable() -> None:
    body = {
        "status": "COMPLETED",
        "logs": None,
        "error": "Runner disconnected",
        "error_type": "runner_disconnected",
    }
    status = mock_hook(Script(ok(body))).get_status(REF)
    assert status.status == "COMPLETED" and status.failed
    err = error_from_completed(status.error, status.error_type, app_id="fal-ai/flux/dev", request_id="r1")
    assert isinstance(err, FalRequestFailed) and err.retryable


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (ok({"status": "CANCELLATION_REQUESTED"}, 202), "CANCELLATION_REQUESTED"),
        (ok({"status": "ALREADY_COMPLETED"}, 400), "ALREADY_COMPLETED"),
        (ok({"status": "NOT_FOUND"}, 404), "NOT_FOUND"),
    ],
)
def test_cancel_outcomes_are_answers_not_errors(response: httpx.Response, expected: str) -> None:
    assert mock_hook(Script(response)).cancel(REF) == expected


def test_cancel_raises_on_other_errors() -> None:
    with pytest.raises(FalAuthError):
        mock_hook(Script(ok({"detail": "nope"}, 401))).cancel(REF)
    with pytest.raises(FalPermanentError):
        mock_hook(Script(ok({"detail": "bad"}, 400))).cancel(REF)


# -- retries -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "failure",
    [
        ok({"detail": "slow down"}, 429),
        INGRESS_503,
        httpx.Response(502, text="bad gateway"),
        ok({}, 408),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ConnectError("refused"),
    ],
)
def test_get_retries_transient_failures(failure: object, waits: list[float]) -> None:
    script = Script(failure, failure, ok({"status": "IN_QUEUE", "queue_position": 1}, 202))  # type: ignore[arg-type]
    status = mock_hook(script).get_status(REF)
    assert status.status == "IN_QUEUE"
    assert script.calls == 3
    assert len(waits) == 2


def test_get_gives_up_after_retry_limit_with_typed_error(waits: list[float]) -> None:
    script = Script(httpx.ConnectError("refused"))
    with pytest.raises(FalConnectionError):
        mock_hook(script, retry_limit=3).get_status(REF)
    assert script.calls == 3
    script = Script(ok({"detail": "busy"}, 429))
    with pytest.raises(FalRateLimitError):
        mock_hook(script, retry_limit=2).get_status(REF)
    assert script.calls == 2


def test_user_start_timeout_504_is_never_retried(waits: list[float]) -> None:
    script = Script(httpx.Response(504, text="nginx timeout", headers={"X-Fal-Request-Timeout-Type": "user"}))
    with pytest.raises(FalServerError):
        mock_hook(script).get_result(REF)
    assert script.calls == 1 and waits == []


@pytest.mark.parametrize(
    "failure",
    [
        ok({"detail": "boom"}, 500),
        ok({"detail": "runner"}, 503, FAL),
        httpx.Response(502, text="nginx bad gateway"),
        httpx.ReadTimeout("read timed out after sending"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.WriteError("broken pipe"),
    ],
)
def test_submit_is_not_retried_once_fal_may_have_accepted_it(failure: object, waits: list[float]) -> None:
    script = Script(failure, ok(SUBMITTED))  # type: ignore[arg-type]
    hook = mock_hook(script)
    with pytest.raises((FalServerError, FalTimeoutError, FalConnectionError)):
        hook.submit("fal-ai/flux/dev", {"prompt": "x"})
    assert script.calls == 1 and waits == []
    script = Script(failure, ok({"x": 1}))  # type: ignore[arg-type]
    with pytest.raises((FalServerError, FalTimeoutError, FalConnectionError)):
        mock_hook(script).run("fal-ai/flux/dev", {"prompt": "x"})
    assert script.calls == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("connect timed out"),
        ok({"detail": "busy"}, 429),
        INGRESS_503,
    ],
)
def test_submit_is_retried_where_fal_cannot_have_accepted_it(failure: object, waits: list[float]) -> None:
    script = Script(failure, ok(SUBMITTED))  # type: ignore[arg-type]
    ref = mock_hook(script).submit("fal-ai/flux/dev", {"prompt": "x"})
    assert ref.request_id == "r1"
    assert script.calls == 2 and len(waits) == 1


def test_retry_after_seconds_is_honoured_and_capped(waits: list[float]) -> None:
    script = Script(ok({}, 429, {"Retry-After": "7"}), ok({}, 429, {"Retry-After": "999"}), ok(SUBMITTED))
    mock_hook(script, retry_max_wait=20).submit("fal-ai/flux/dev", {})
    assert waits == [7.0, 20.0]


def test_retry_after_http_date_is_honoured(waits: list[float]) -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    script = Script(
        httpx.Response(503, text="nginx", headers={"Retry-After": when}),
        ok({"status": "IN_QUEUE", "queue_position": 0}),
    )
    mock_hook(script).get_status(REF)
    assert len(waits) == 1 and 2.0 <= waits[0] <= 5.0


def test_backoff_is_exponential_with_jitter_and_capped(waits: list[float]) -> None:
    script = Script(httpx.ConnectError("refused"))
    with pytest.raises(FalConnectionError):
        mock_hook(script, retry_limit=6, retry_max_wait=3).get_status(REF)
    # min wait 0.5 (connection extra): 0.5, 1, 2, 4->cap 3, 8->cap 3, each x U(0.5, 1.5) then capped
    assert len(waits) == 5
    assert 0.25 <= waits[0] <= 0.75 and 0.5 <= waits[1] <= 1.5 and 1.0 <= waits[2] <= 3.0
    assert all(w <= 3.0 for w in waits)


def test_each_retry_is_logged_without_the_key(waits: list[float], caplog: pytest.LogCaptureFixture) -> None:
    script = Script(ok({}, 429), ok({"status": "IN_QUEUE", "queue_position": 0}))
    hook = mock_hook(script)
    messages: list[str] = []
    hook.log.warning = lambda msg, *args: messages.append(msg % args)  # type: ignore[method-assign]
    hook.get_status(REF)
    assert len(messages) == 1 and "HTTP 429" in messages[0]
    assert "super-secret" not in messages[0]


async def test_async_retries_use_the_same_policy(waits: list[float], async_transport) -> None:
    script = Script(ok({}, 429), INGRESS_503, ok({"status": "IN_QUEUE", "queue_position": 2}, 202))
    async_transport(script)
    status = await FalHook().aget_status(REF)
    assert status.status == "IN_QUEUE" and script.calls == 3 and len(waits) == 2
    script2 = Script(ok({"detail": "boom"}, 500), ok(SUBMITTED))
    async_transport(script2)
    with pytest.raises(FalServerError):
        await FalHook().asubmit("fal-ai/flux/dev", {})
    assert script2.calls == 1
