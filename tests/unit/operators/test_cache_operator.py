"""``cache=True`` on FalInferenceOperator: a hit pays nothing, a miss stores, a claim is shared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from fal_provider.cache import FalCacheError, ResultCache, cache_key
from fal_provider.exceptions import FalInputError
from fal_provider.operators.fal import FalInferenceOperator
from tests.unit.operators.fakes import APP, done, install_hook, make_context, make_hook, make_ref, pushed

PNG = b"\x89PNG\r\n\x1a\nimage"
ARGS = {"prompt": "a cat", "seed": 7}
RESULT = {"images": [{"url": "https://cdn.example/a.png", "content_type": "image/png"}], "seed": 7}


def hook_with_media(**kwargs: Any) -> MagicMock:
    hook = make_hook(kwargs.pop("statuses", [done()]), result=kwargs.pop("result", RESULT))
    hook.fetch_media.return_value = (PNG, "image/png")
    hook.settings.cache_path = None
    return hook


def op(hook: MagicMock, cache_path: Any, **kwargs: Any) -> FalInferenceOperator:
    kwargs.setdefault("arguments", ARGS)
    operator = FalInferenceOperator(
        task_id=kwargs.pop("task_id", "t2i"),
        app_id=APP,
        cache=True,
        cache_path=cache_path,
        poll_interval=0.01,
        max_poll_interval=0.02,
        **kwargs,
    )
    return install_hook(operator, hook)


def test_second_run_is_a_hit_with_no_fal_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = hook_with_media()
    value = op(first, tmp_path).execute(make_context())
    first.submit.assert_called_once()
    copy = value["images"][0]["url"]
    assert copy.startswith(f"file://{tmp_path}/media/") and Path(copy[7:]).read_bytes() == PNG
    assert value["images"][0]["fal_url"] == "https://cdn.example/a.png"

    second = hook_with_media()
    context = make_context()
    with caplog.at_level("INFO"):
        again = op(second, tmp_path).execute(context)
    assert again == value
    assert second.method_calls == [], "a cache hit must not call fal at all"
    assert "cache hit, saved ~unknown" in caplog.text
    cost = pushed(context)["fal_cost"]
    assert cost["cost"] == 0.0 and cost["cache_hit"] is True and cost["cached_request_id"] == "req-1"


def test_the_saved_figure_is_the_cost_known_at_caching_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = cache_key(APP, ARGS)
    ResultCache(tmp_path).put(key, {"ok": 1}, app_id=APP, request_id="r0", cost=0.003, currency="USD")
    hook = hook_with_media()
    with caplog.at_level("INFO"):
        assert op(hook, tmp_path).execute(make_context()) == {"ok": 1}
    assert "cache hit, saved ~0.003 USD" in caplog.text


def test_key_order_of_arguments_does_not_matter(tmp_path: Path) -> None:
    op(hook_with_media(), tmp_path).execute(make_context())
    second = hook_with_media()
    op(second, tmp_path, arguments={"seed": 7, "prompt": "a cat"}).execute(make_context())
    second.submit.assert_not_called()
    third = hook_with_media()
    op(third, tmp_path, arguments={"seed": 8, "prompt": "a cat"}).execute(make_context())
    third.submit.assert_called_once()


def test_cache_version_and_refresh_cache_pay_again(tmp_path: Path) -> None:
    op(hook_with_media(), tmp_path).execute(make_context())
    bumped = hook_with_media()
    op(bumped, tmp_path, cache_version="2").execute(make_context())
    bumped.submit.assert_called_once()
    refreshed = hook_with_media(result={"images": [], "fresh": True})
    assert op(refreshed, tmp_path, refresh_cache=True).execute(make_context())["fresh"] is True
    refreshed.submit.assert_called_once()
    after = hook_with_media()
    assert op(after, tmp_path).execute(make_context())["fresh"] is True  # the refresh was stored
    after.submit.assert_not_called()


def test_select_applies_to_a_hit_too(tmp_path: Path) -> None:
    op(hook_with_media(), tmp_path).execute(make_context())
    hook = hook_with_media()
    url = op(hook, tmp_path, select="images.0.url").execute(make_context())
    assert url.startswith(f"file://{tmp_path}/media/")


def test_no_cache_location_is_an_input_error_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__FAL__CACHE_PATH", raising=False)
    hook = hook_with_media()
    with pytest.raises(FalInputError, match="cache_path"):
        op(hook, None).execute(make_context())
    hook.submit.assert_not_called()


def test_unwritable_cache_is_an_input_error_before_any_call(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    hook = hook_with_media()
    with pytest.raises(FalCacheError, match="cannot be written"):
        op(hook, blocker / "cache").execute(make_context())
    assert hook.method_calls == [] or not hook.submit.called
    hook.submit.assert_not_called()


def test_connection_extra_names_the_cache(tmp_path: Path) -> None:
    hook = hook_with_media()
    hook.settings.cache_path = str(tmp_path / "from-conn")
    op(hook, None).execute(make_context())
    assert any((tmp_path / "from-conn" / "entries").rglob("*.json"))


def test_a_task_waits_for_the_request_another_task_is_paying_for(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    key = cache_key(APP, ARGS)
    assert cache.claim(key, "other-dag/run/t2i/-1") is None
    cache.record_request(key, "other-dag/run/t2i/-1", make_ref("theirs").to_xcom())
    hook = hook_with_media(statuses=[done(), done()])
    waiter = op(hook, tmp_path)
    value = waiter.execute(make_context())
    hook.submit.assert_not_called()
    assert waiter.cancel_on_kill is False  # its kill must not cancel the other task's request
    waited = [c.args[0].request_id for c in hook.get_status.call_args_list]
    assert waited == ["theirs", "theirs"]
    assert value["images"][0]["url"].startswith("file://")
    assert cache.get(key) is not None


def test_a_claim_without_request_yet_is_waited_for_until_its_result_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ResultCache(tmp_path)
    key = cache_key(APP, ARGS)
    cache.claim(key, "other/run/t2i/-1")
    polls: list[float] = []

    def first_task_finishes(seconds: float) -> None:
        polls.append(seconds)
        cache.put(key, {"from": "the other task"}, app_id=APP, request_id="theirs")

    monkeypatch.setattr("fal_provider.operators._caching.time.sleep", first_task_finishes)
    hook = hook_with_media()
    assert op(hook, tmp_path).execute(make_context()) == {"from": "the other task"}
    assert polls and hook.method_calls == []


def test_a_claim_whose_request_failed_is_taken_over(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    key = cache_key(APP, ARGS)
    cache.claim(key, "other/run/t2i/-1")
    cache.record_request(key, "other/run/t2i/-1", make_ref("theirs").to_xcom())
    hook = hook_with_media(statuses=[done(error="boom", error_type="runner_server_error"), done()])
    op(hook, tmp_path).execute(make_context())
    hook.submit.assert_called_once()


def test_the_submitter_names_its_request_in_the_claim_before_waiting(tmp_path: Path) -> None:
    from fal_provider._compat import TaskDeferred
    from tests.unit.operators.fakes import queued

    hook = hook_with_media(statuses=[queued()])
    with pytest.raises(TaskDeferred):
        op(hook, tmp_path, deferrable=True).execute(make_context())
    claim = ResultCache(tmp_path).read_claim(cache_key(APP, ARGS))
    assert claim is not None and claim.owner == "d/r/t/-1" and claim.request["request_id"] == "req-1"


def test_a_cached_copy_passed_to_the_next_model_is_uploaded_first(tmp_path: Path) -> None:
    value = op(hook_with_media(), tmp_path).execute(make_context())
    copy = value["images"][0]["url"]
    hook = hook_with_media()
    hook.upload.return_value = "https://cdn.example/uploaded.png"
    downstream = op(hook, tmp_path, task_id="upscale", arguments={"image_url": copy, "scale": 2})
    downstream.execute(make_context())
    hook.upload.assert_called_once()
    assert hook.upload.call_args.args[0] == PNG
    assert hook.submit.call_args.args[1] == {"image_url": "https://cdn.example/uploaded.png", "scale": 2}
    # the key is the copy's URI, stable across runs, not the fresh upload URL
    key = cache_key(APP, {"image_url": copy, "scale": 2})
    assert ResultCache(tmp_path).get(key) is not None
    entry = json.loads(Path(ResultCache(tmp_path).entry_path(key).path).read_text())
    assert entry["request_id"] == "req-1"


def test_cache_off_does_not_touch_the_store(tmp_path: Path) -> None:
    hook = hook_with_media()
    operator = FalInferenceOperator(task_id="t", app_id=APP, arguments=ARGS, cache_path=tmp_path)
    install_hook(operator, hook)
    assert operator.execute(make_context()) == RESULT
    assert not (tmp_path / "entries").exists()


def test_a_task_without_cached_copies_never_opens_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs and result media on http(s) (or data: URIs) cannot be cached copies: the cache and
    its configuration stay out of the default task, even with a cache_path configured."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cache was opened for a task that cannot use it")

    monkeypatch.setattr("fal_provider.operators.fal.open_cache", refuse)
    hook = hook_with_media()
    hook.settings.cache_path = str(tmp_path)
    arguments = {"image_url": "https://cdn.example/in.png", "mask": "data:image/png;base64,AAAA", "n": [1]}
    operator = FalInferenceOperator(
        task_id="t",
        app_id=APP,
        arguments=arguments,
        output_path=str(tmp_path / "out"),
        download_media=True,
        poll_interval=0.01,
    )
    install_hook(operator, hook).execute(make_context())
    hook.submit.assert_called_once()
    assert hook.submit.call_args.args[1] == arguments
    hook.fetch_media.assert_called_once()


def test_without_cache_true_a_cached_copy_is_still_uploaded_and_read_from_the_cache(tmp_path: Path) -> None:
    value = op(hook_with_media(), tmp_path).execute(make_context())
    copy = value["images"][0]["url"]
    hook = hook_with_media(result={"images": [{"url": copy, "content_type": "image/png"}]})
    hook.upload.return_value = "https://cdn.example/uploaded.png"
    downstream = FalInferenceOperator(
        task_id="upscale",
        app_id=APP,
        arguments={"image_url": copy},
        cache_path=tmp_path,
        output_path=str(tmp_path / "out"),
        download_media=True,
        poll_interval=0.01,
    )
    install_hook(downstream, hook).execute(make_context())
    assert hook.submit.call_args.args[1] == {"image_url": "https://cdn.example/uploaded.png"}
    hook.fetch_media.assert_not_called()  # the copy is read from the cache, not downloaded


@pytest.mark.parametrize(
    ("value", "may"),
    [
        ("a cat", False),
        ("https://cdn.example/a.png", False),
        ("HTTP://cdn.example/a.png", False),
        ("data:text/plain,see://this", False),
        ("file:///data/fal-cache/media/ab.png", True),
        ("s3://aws_default@bucket/fal-cache/media/ab.png", True),
        ({"a": [{"b": "gs://bucket/x.png"}]}, True),
        ({"a": [{"b": "https://x"}], "n": 3}, False),
    ],
)
def test_what_may_name_a_cached_copy(value: Any, may: bool) -> None:
    from fal_provider.operators.fal import may_name_cached_copy

    assert may_name_cached_copy(value) is may
