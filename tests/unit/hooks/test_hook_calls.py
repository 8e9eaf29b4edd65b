"""URLs, headers and input validation: everything decided before a byte leaves the machine."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

import pytest

from fal_provider import __version__
from fal_provider.hooks._calls import CallBuilder
from fal_provider.hooks._transport import Call
from fal_provider.hooks.fal import FalHook
from fal_provider.models import FalRequestRef, RequestOptions
from tests.unit.hooks.hook_fakes import CDN, KEY, QUEUE, REST, RUN, Script, connection_json, mock_hook, ok

SUBMITTED = {"request_id": "req-1", "status": "IN_QUEUE", "queue_position": 0}


@pytest.mark.parametrize(
    ("app_id", "submit_path", "base"),
    [
        ("fal-ai/flux/dev", "fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/flux", "fal-ai/flux", "fal-ai/flux"),
        (
            "fal-ai/florence-2-large/more-detailed-caption",
            "fal-ai/florence-2-large/more-detailed-caption",
            "fal-ai/florence-2-large",
        ),
        ("workflows/acme/pipeline/step", "workflows/acme/pipeline/step", "workflows/acme/pipeline"),
        ("comfy/acme/graph", "comfy/acme/graph", "comfy/acme/graph"),
        ("12345-legacy-app", "12345/legacy-app", "12345/legacy-app"),
    ],
)
def test_submit_uses_full_id_and_requests_urls_drop_the_sub_path(
    app_id: str, submit_path: str, base: str
) -> None:
    script = Script(ok(SUBMITTED), ok({"status": "IN_QUEUE", "queue_position": 3}, status=202))
    hook = mock_hook(script)
    ref = hook.submit(app_id, {"prompt": "cat"})
    assert str(script.requests[0].url) == f"{QUEUE}/{submit_path}"
    hook.get_status(ref)
    assert str(script.requests[1].url).split("?")[0] == f"{QUEUE}/{base}/requests/req-1/status"
    built = hook.request_ref(app_id, "abc")
    assert (built.response_url, built.status_url, built.cancel_url) == (
        f"{QUEUE}/{base}/requests/abc",
        f"{QUEUE}/{base}/requests/abc/status",
        f"{QUEUE}/{base}/requests/abc/cancel",
    )


@pytest.mark.parametrize("bad", ["", "justone", "workflows/onlyowner", "/"])
def test_malformed_app_id_is_a_value_error_showing_the_form(bad: str) -> None:
    script = Script(ok(SUBMITTED))
    with pytest.raises(ValueError, match="owner/app"):
        mock_hook(script).submit(bad, {})
    assert script.calls == 0


def test_submit_extra_path_webhook_and_max_queue_length() -> None:
    script = Script(ok(SUBMITTED))
    ref = mock_hook(script).submit(
        "fal-ai/flux/dev",
        {"p": 1},
        path="/extra/",
        webhook_url="https://hooks.example/x?a=1",
        options={"max_queue_length": 4},
    )
    url = urlsplit(str(script.requests[0].url))
    assert url.path == "/queue/fal-ai/flux/dev/extra"
    assert parse_qs(url.query) == {
        "fal_webhook": ["https://hooks.example/x?a=1"],
        "fal_max_queue_length": ["4"],
    }
    assert ref.webhook_url == "https://hooks.example/x?a=1"
    assert script.body() == {"p": 1}


def test_returned_urls_on_the_queue_origin_are_followed_verbatim() -> None:
    """(URLs on other origins are rebuilt instead: see test_security_hook_key_origins.)"""
    urls = {
        "status_url": "http://fal.test/other/s",
        "response_url": "http://fal.test/other/r",
        "cancel_url": "http://fal.test/other/c",
    }
    script = Script(
        ok({**SUBMITTED, **urls}), ok({"status": "COMPLETED", "logs": None}), ok({"x": 1}), ok({}, 202)
    )
    hook = mock_hook(script)
    ref = hook.submit("fal-ai/flux/dev", {})
    hook.get_status(ref, logs=True)
    assert hook.get_result(ref.to_xcom()) == {"x": 1}
    assert hook.cancel(ref) == "CANCELLATION_REQUESTED"
    assert [str(r.url) for r in script.requests[1:]] == [
        "http://fal.test/other/s?logs=1",
        "http://fal.test/other/r",
        "http://fal.test/other/c",
    ]
    assert script.requests[3].method == "PUT"


def test_header_precedence_connection_then_call_then_options(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"run_url": RUN, "headers": {"X-Team": "conn", "X-Fal-Queue-Priority": "normal", "X-Keep": "1"}}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json(extra=extra))
    script = Script(ok(SUBMITTED))
    mock_hook(script).submit(
        "fal-ai/flux/dev",
        {},
        headers={"x-team": "call", "x-fal-queue-priority": "normal", "Authorization": "Key stolen"},
        options=RequestOptions(priority="low", start_timeout=5, no_retry=True, runner_hint="h1"),
    )
    headers = script.requests[0].headers
    assert headers["x-team"] == "call"
    assert headers["x-keep"] == "1"
    assert headers["x-fal-queue-priority"] == "low"
    assert headers["x-fal-request-timeout"] == "5.0"
    assert headers["x-fal-no-retry"] == "1"
    assert headers["x-fal-runner-hint"] == "h1"
    assert headers["authorization"] == f"Key {KEY}"
    assert headers["user-agent"] == f"airflow-provider-fal/{__version__}"
    assert headers.get_list("x-team") == ["call"]


@pytest.mark.parametrize("options", [{"priority": "urgent"}, {"start_timeout": -1}, {"bogus": 1}])
def test_invalid_options_fail_before_any_call(options: dict) -> None:
    script = Script(ok(SUBMITTED))
    hook = mock_hook(script)
    with pytest.raises(ValueError, match="Invalid fal request options"):
        hook.submit("fal-ai/flux/dev", {}, options=options)
    with pytest.raises(ValueError):
        hook.run("fal-ai/flux/dev", {}, options=options)
    assert script.calls == 0


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"when": object()}, "arguments['when'] is of type object"),
        ({"a": [1, {"b": {1, 2}}]}, "arguments['a'][1]['b'] is of type set"),
        ({"x": math.nan}, "arguments['x'] is nan"),
        ({"nested": {3: "v"}}, "key 3"),
        (["not", "a", "dict"], "must be a JSON object"),
    ],
)
def test_non_json_arguments_fail_before_any_call(arguments: object, named: str) -> None:
    script = Script(ok(SUBMITTED))
    hook = mock_hook(script)
    for call in (hook.submit, hook.run):
        with pytest.raises(ValueError) as info:
            call("fal-ai/flux/dev", arguments)  # type: ignore[operator]
        assert named in str(info.value)
    with pytest.raises(ValueError):
        list(hook.stream("fal-ai/any-llm", arguments))  # type: ignore[arg-type]
    assert script.calls == 0


def test_run_posts_to_run_host_with_path() -> None:
    script = Script(ok({"images": []}))
    assert mock_hook(script).run("fal-ai/flux/dev", {"prompt": "x"}, path="sub") == {"images": []}
    assert str(script.requests[0].url) == f"{RUN}/fal-ai/flux/dev/sub"


def test_request_reference_accepts_xcom_dict_and_json_string() -> None:
    script = Script(ok({"status": "IN_PROGRESS", "logs": []}, 202))
    hook = mock_hook(script)
    ref = FalRequestRef(app_id="fal-ai/flux/dev", request_id="r9")
    hook.get_status(ref.to_xcom())
    hook.get_status(ref.model_dump_json())  # type: ignore[arg-type]
    assert all(str(r.url).startswith(f"{QUEUE}/fal-ai/flux/requests/r9/status") for r in script.requests)
    with pytest.raises(ValueError, match="request_id"):
        hook.get_status({"app_id": "fal-ai/flux"})


def test_logs_flag_on_status() -> None:
    script = Script(ok({"status": "IN_PROGRESS", "logs": [{"message": "hi"}]}, 202))
    hook = mock_hook(script)
    status = hook.get_status({"app_id": "a/b", "request_id": "r"}, logs=True)
    assert status.logs is not None and status.logs[0].message == "hi"
    hook.get_status({"app_id": "a/b", "request_id": "r"})
    assert [r.url.params["logs"] for r in script.requests] == ["1", "0"]


def test_upload_flow_token_then_cdn_post(tmp_path) -> None:
    token = {
        "token": "cdn-tok",
        "token_type": "Bearer",
        "base_url": CDN,
        "expires_at": "2999-01-01T00:00:00+00:00",
    }
    script = Script(ok(token), ok({"access_url": f"{CDN}/files/a/cat.png"}))
    hook = mock_hook(script)
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG...")
    assert hook.upload(image) == f"{CDN}/files/a/cat.png"
    assert hook.upload(b"raw", file_name="notes.txt") == f"{CDN}/files/a/cat.png"
    token_req, first, second = script.requests
    assert str(token_req.url) == f"{REST}/storage/auth/token?storage_type=fal-cdn-v3"
    assert token_req.headers["authorization"] == f"Key {KEY}"
    assert str(first.url) == f"{CDN}/files/upload"
    assert first.headers["authorization"] == "Bearer cdn-tok"
    assert first.headers["content-type"] == "image/png"
    assert first.headers["x-fal-file-name"] == "cat.png"
    assert first.content == b"\x89PNG..."
    assert second.headers["content-type"] == "text/plain"
    with pytest.raises(FileNotFoundError):
        hook.upload(tmp_path / "missing.png")


def test_hook_reuses_one_sync_client() -> None:
    hook = FalHook()
    first = hook._http
    assert hook._http is first
    hook.close()
    assert first.is_closed
    assert hook._http is not first
    hook.close()


def test_polls_of_one_request_reuse_its_status_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building the call (URL checks, headers, timeout) was a tenth of a poll's CPU; a waiter polls
    # the same request, so it is built once. The URL check (a foreign status_url is replaced, with
    # a warning) therefore runs once per request, not once per poll.
    built: list[str] = []
    real_status = CallBuilder.status

    def counting_status(self: CallBuilder, request: object, *, logs: bool = False) -> Call:
        built.append(FalRequestRef.coerce(request).request_id)
        return real_status(self, request, logs=logs)

    monkeypatch.setattr(CallBuilder, "status", counting_status)
    script = Script(*(ok({"status": "IN_PROGRESS"}, 202) for _ in range(6)))
    hook = mock_hook(script)
    foreign = {"app_id": "a/b", "request_id": "r", "status_url": "https://elsewhere.example/status"}
    for _ in range(3):
        hook.get_status(foreign)
    hook.get_status(foreign, logs=True)
    hook.get_status({"app_id": "a/b", "request_id": "other"})
    hook.get_status(foreign)  # one hook polling several requests (a batch) keeps each one's call
    urls = [str(r.url).split("?")[0] for r in script.requests]
    r_url, other_url = f"{QUEUE}/a/b/requests/r/status", f"{QUEUE}/a/b/requests/other/status"
    assert urls == [r_url] * 4 + [other_url, r_url]
    assert built == ["r", "r", "other"]  # once per request and logs flag
