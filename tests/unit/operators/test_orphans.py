"""Orphan recovery: an intent with no request id is matched against fal's request history."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest

from fal_provider.exceptions import FalInputError, FalOrphanedRequestError, FalServerError
from fal_provider.hooks.platform import HistoryEntry
from fal_provider.models import input_digest
from fal_provider.operators._orphans import CLOCK_SKEW, endpoint_id, find_orphan
from fal_provider.operators.fal import FalInferenceOperator
from tests.unit.operators.fakes import (
    APP,
    FakeStateStore,
    done,
    install_hook,
    make_context,
    make_hook,
    make_ref,
)

ARGS = {"prompt": "a cat"}


def at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def entry(request_id: str, started: float, body: dict[str, Any] | None = ARGS) -> HistoryEntry:
    return HistoryEntry(
        request_id=request_id, endpoint_id=APP, status="in_progress", started_at=at(started), input=body
    )


def hook_with_history(entries: list[HistoryEntry] | Exception, statuses: list[Any] | None = None) -> Any:
    hook = make_hook(statuses or [done()], result={"adopted": True})
    if isinstance(entries, Exception):
        hook.get_request_history.side_effect = entries
    else:
        hook.get_request_history.return_value = entries
    hook.request_ref.side_effect = lambda app_id, request_id: make_ref(request_id, app_id)
    hook.settings.cache_path = None
    return hook


def intent_store(fingerprint: str, when: float, body: dict[str, Any] = ARGS) -> FakeStateStore:
    store = FakeStateStore()
    store.data["fal_request"] = {
        "run_id": "r",
        "request": None,
        "fingerprint": fingerprint,
        "input_sha": input_digest(body),
        "intent_at": when,
    }
    return store


def operator(hook: Any, **kwargs: Any) -> FalInferenceOperator:
    op = FalInferenceOperator(task_id="t", app_id=APP, arguments=ARGS, poll_interval=0.01, **kwargs)
    return install_hook(op, hook)


def fingerprint_of(op: FalInferenceOperator) -> str:
    return op._fingerprint()


def test_picks_the_request_with_the_same_input_closest_to_the_intent() -> None:
    now = time.time()
    hook = hook_with_history(
        [
            entry("other-input", now + 0.1, {"prompt": "a dog"}),
            entry("earlier-same-input", now - 3 * CLOCK_SKEW),  # before the window: another run's
            entry("ours", now + 0.2),
            entry("later-twin", now + 30),
        ]
    )
    assert find_orphan(hook, APP, "", now, input_digest({"prompt": "a cat"})) == "ours"
    (call,) = hook.get_request_history.call_args_list
    assert call.args[0] == APP and call.kwargs["with_payloads"] is True
    assert call.args[1].timestamp() == pytest.approx(now - CLOCK_SKEW)


def test_endpoint_id_includes_the_path() -> None:
    assert endpoint_id("fal-ai/flux", "/dev") == "fal-ai/flux/dev"
    assert endpoint_id("fal-ai/flux/schnell", "") == "fal-ai/flux/schnell"


def test_a_retry_adopts_the_orphan_instead_of_submitting() -> None:
    now = time.time()
    hook = hook_with_history([entry("ours", now + 0.1)])
    op = operator(hook)
    store = intent_store(fingerprint_of(op), now)
    assert op.execute(make_context(store)) == {"adopted": True}
    hook.submit.assert_not_called()
    assert hook.get_status.call_args.args[0].request_id == "ours"
    assert store.data["fal_request"]["request"]["request_id"] == "ours"  # saved for the next try


def test_no_match_in_a_history_with_payloads_means_fal_never_got_it() -> None:
    now = time.time()
    hook = hook_with_history([entry("someone-else", now, {"prompt": "a dog"})])
    op = operator(hook, on_orphan="fail")  # no policy needed: submitting is safe
    op.execute(make_context(intent_store(fingerprint_of(op), now)))
    hook.submit.assert_called_once()


@pytest.mark.parametrize(
    "history",
    [FalServerError("Platform API down"), [entry("no-payload", 0.0, None)]],
    ids=["history down", "payload storage off"],
)
def test_when_history_cannot_tell_on_orphan_decides(history: Any) -> None:
    now = time.time()
    failing = hook_with_history(history)
    op = operator(failing, on_orphan="fail")
    with pytest.raises(FalOrphanedRequestError, match="on_orphan='fail'") as err:
        op.execute(make_context(intent_store(fingerprint_of(op), now)))
    assert not err.value.retryable
    failing.submit.assert_not_called()

    resubmitting = hook_with_history(history)
    op = operator(resubmitting)  # the default: resubmit
    op.execute(make_context(intent_store(fingerprint_of(op), now)))
    resubmitting.submit.assert_called_once()


def test_an_intent_for_other_inputs_is_not_looked_for() -> None:
    hook = hook_with_history([])
    op = operator(hook)
    op.execute(make_context(intent_store("another-fingerprint", time.time())))
    hook.get_request_history.assert_not_called()
    hook.submit.assert_called_once()


def test_the_intent_is_written_before_the_post_with_the_sent_body() -> None:
    store = FakeStateStore()
    hook = hook_with_history([])
    seen: list[Any] = []
    hook.submit.side_effect = lambda *a, **k: (seen.append(dict(store.data["fal_request"])), make_ref())[1]
    operator(hook).execute(make_context(store))
    (intent,) = seen
    assert intent["request"] is None and intent["input_sha"] == input_digest(ARGS)
    assert abs(intent["intent_at"] - time.time()) < 60
    assert store.data["fal_request"]["request"]["request_id"] == "req-1"  # replaced right after


def test_on_orphan_is_checked_at_parse_time() -> None:
    with pytest.raises(FalInputError, match="on_orphan"):
        FalInferenceOperator(task_id="t", app_id=APP, on_orphan="ignore")
