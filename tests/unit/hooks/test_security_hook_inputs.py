"""Input that would change where a request goes, or what it says, fails before any network call.

App ids, paths and request ids are URL path segments; keys and header values go into HTTP headers.
Every test sends through a transport that records calls, and asserts it was never called; errors
are permanent :class:`FalInputError`\\ s (no Airflow retries, no HTTP retries) that never echo a
secret.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fal_provider.exceptions import FalInputError, FalPermanentError
from fal_provider.hooks._calls import check_msgpack
from fal_provider.hooks.fal import FalHook
from fal_provider.models import AppId, FalRequestRef, RequestOptions
from tests.unit.hooks.hook_fakes import KEY, Script, connection_json, mock_hook, ok

SECRET = KEY.split(":")[1]
BAD_APP_IDS = [
    "../../rest/tokens",
    "a/b?fal_webhook=http://x/",
    "fal-ai/flux/..",
    "fal-ai/./flux",
    "fal-ai//flux",
    "fal-ai/flux#frag",
    "fal-ai/fl%75x",
    "fal-ai/flux dev",
    " fal-ai/flux",
    "fal-ai/flux\r\nX-Injected: 1",
    "fal-ai/flux\x00",
    "fal-ai/fl\u00fcx",
    "fal-ai\\flux/dev",
    "fal-ai/" + "x" * 129,
]
BAD_PATHS = ["..", "a/../b", "./x", "?fal_webhook=http://x/", "#x", "%2e%2e", "a//b", " x", "x\n"]
BAD_REQUEST_IDS = ["../x", "..", ".", "a/b", "a?b", "a#b", "a%2Fb", "a b", "a\n", ""]


def no_network() -> Script:
    return Script(ok({"request_id": "r", "status": "COMPLETED", "logs": None}))


@pytest.mark.parametrize("app_id", BAD_APP_IDS)
def test_bad_app_ids_fail_every_call_before_the_network(app_id: str) -> None:
    script = no_network()
    hook = mock_hook(script)
    attempts: list[Any] = [
        lambda: hook.submit(app_id, {}),
        lambda: hook.run(app_id, {}),
        lambda: list(hook.stream(app_id, {})),
        lambda: hook.request_ref(app_id, "r"),
        lambda: hook.get_status({"app_id": app_id, "request_id": "r"}),
        lambda: hook.get_result({"app_id": app_id, "request_id": "r"}),
        lambda: hook.cancel({"app_id": app_id, "request_id": "r"}),
        lambda: hook.realtime(app_id).__enter__(),
    ]
    for attempt in attempts:
        with pytest.raises(FalInputError):
            attempt()
    assert script.calls == 0


async def test_bad_app_ids_fail_async_calls_before_the_network(async_transport: Any) -> None:
    script = no_network()
    async_transport(script)
    hook = FalHook()
    for app_id in BAD_APP_IDS:
        with pytest.raises(FalInputError):
            await hook.asubmit(app_id, {})
        with pytest.raises(FalInputError):
            await hook.aget_status({"app_id": app_id, "request_id": "r"})
        with pytest.raises(FalInputError):
            async with hook.arealtime(app_id):
                pass
    assert script.calls == 0


@pytest.mark.parametrize(
    "app_id",
    [
        "fal-ai/flux/schnell",
        "fal-ai/florence-2-large/more-detailed-caption",
        "fal-ai/flux-pro/v1.1-ultra",
        "workflows/owner/name",
        "comfy/owner/graph_v2",
        "110602490-lora",
        "/fal-ai/flux/dev/",
    ],
)
def test_real_fal_app_ids_are_accepted(app_id: str) -> None:
    assert AppId.parse(app_id).full == app_id.strip("/").replace("110602490-", "110602490/")


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_fail_before_the_network(path: str) -> None:
    script = no_network()
    hook = mock_hook(script)
    for attempt in (
        lambda: hook.submit("fal-ai/flux", {}, path=path),
        lambda: hook.run("fal-ai/flux", {}, path=path),
        lambda: list(hook.stream("fal-ai/flux", {}, path=path)),
        lambda: hook.realtime("fal-ai/flux", path=path).__enter__(),
    ):
        with pytest.raises(FalInputError, match="Invalid path"):
            attempt()
    assert script.calls == 0


@pytest.mark.parametrize("request_id", BAD_REQUEST_IDS)
def test_bad_request_ids_fail_before_the_network(request_id: str) -> None:
    script = no_network()
    hook = mock_hook(script)
    with pytest.raises(FalInputError, match="request_id"):
        hook.request_ref("fal-ai/flux", request_id)
    for attempt in (hook.get_status, hook.get_result, hook.cancel):
        with pytest.raises(FalInputError, match="request_id"):
            attempt({"app_id": "fal-ai/flux", "request_id": request_id})
    with pytest.raises(ValueError):
        FalRequestRef(app_id="fal-ai/flux", request_id=request_id)
    assert script.calls == 0


# -- keys and headers ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_key", [f"{KEY}\r\nX-Injected: 1", f"{KEY}\n!", f"te\x00{KEY}", f"{KEY}\u00e9"])
def test_a_key_with_control_characters_fails_when_the_hook_resolves_it_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, waits: list[float], bad_key: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json(password=bad_key))
    script = no_network()
    hook = mock_hook(script)
    with pytest.raises(FalInputError) as err:
        hook.settings  # noqa: B018 - resolving is the check
    with pytest.raises(FalInputError):
        hook.submit("fal-ai/flux", {})
    message = f"{err.value} {err.value!r} {err.value.args}"
    assert SECRET not in message and "test-key-id" not in message
    assert "fal_default" in message
    assert (script.calls, waits) == (0, [])


def test_a_key_from_fal_key_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = json.loads(connection_json())
    del conn["password"]
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("FAL_KEY", f"{KEY}\rX-Injected: 1")
    with pytest.raises(FalInputError) as err:
        FalHook().settings  # noqa: B018
    assert SECRET not in str(err.value)
    monkeypatch.setenv("FAL_KEY", f"  {KEY}\n")  # surrounding whitespace is not part of a key
    assert FalHook().settings.key == KEY


PROXY_SECRET = "proxy-token-not-for-logs"
BAD_VALUES = [
    f"{PROXY_SECRET}\r\nX-Injected: 1",
    f"{PROXY_SECRET}\n",
    f"{PROXY_SECRET}\x7f",
    f"{PROXY_SECRET}\u2028",
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_hook_headers_with_control_characters_fail_when_the_hook_is_built(value: str) -> None:
    with pytest.raises(FalInputError) as err:
        FalHook(headers={"X-Proxy-Token": value})
    assert PROXY_SECRET not in str(err.value)
    assert "X-Proxy-Token" in str(err.value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_connection_headers_with_control_characters_fail_at_resolution(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    extra = {"run_url": "http://fal.test/run", "headers": {"X-Proxy-Token": value}}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json(extra=extra))
    with pytest.raises(FalInputError) as err:
        FalHook().settings  # noqa: B018
    assert PROXY_SECRET not in str(err.value)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Proxy-Token": f"{PROXY_SECRET}\r\nX-Injected: 1"},
        {"X Bad Name": "v"},
        {"X-Token: " + PROXY_SECRET: "v"},
        {"X-A\r\nX-Injected": "v"},
        {"": "v"},
    ],
)
def test_call_headers_that_cannot_be_sent_are_permanent_input_errors(
    headers: dict[str, str], waits: list[float]
) -> None:
    """Today h11 refuses them on the wire: a retried 'connection error' whose text shows the value."""
    script = no_network()
    hook = mock_hook(script)
    for attempt in (
        lambda: hook.submit("fal-ai/flux", {}, headers=headers),
        lambda: hook.run("fal-ai/flux", {}, headers=headers),
        lambda: list(hook.stream("fal-ai/flux", {}, headers=headers)),
    ):
        with pytest.raises(FalInputError) as err:
            attempt()
        assert isinstance(err.value, FalPermanentError)
        assert PROXY_SECRET not in str(err.value)
    assert (script.calls, waits) == (0, [])


async def test_async_call_headers_are_checked_too(async_transport: Any, waits: list[float]) -> None:
    script = no_network()
    async_transport(script)
    with pytest.raises(FalInputError):
        await FalHook().asubmit("fal-ai/flux", {}, headers={"X-A": "b\r\nX-Injected: 1"})
    assert (script.calls, waits) == (0, [])


@pytest.mark.parametrize("hint", ["runner-1\r\nX-Injected: 1", "runner\x00", "r\u00e9"])
def test_runner_hint_with_control_characters_is_rejected(hint: str) -> None:
    script = no_network()
    with pytest.raises(FalInputError, match="runner_hint"):
        mock_hook(script).submit("fal-ai/flux", {}, options={"runner_hint": hint})
    with pytest.raises(FalInputError, match="runner_hint"):
        RequestOptions.build(runner_hint=hint)
    assert script.calls == 0


# -- arguments -------------------------------------------------------------------------------------
def test_circular_arguments_name_the_key_path() -> None:
    script = no_network()
    inner: dict[str, Any] = {"images": []}
    inner["images"].append({"parent": inner})
    with pytest.raises(FalInputError, match="circular") as err:
        mock_hook(script).submit("fal-ai/flux", {"input": inner})
    assert "arguments['input']['images'][0]['parent']" in str(err.value)
    assert isinstance(err.value, ValueError)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(FalInputError, match=r"arguments\['x'\]\[0\] is arguments\['x'\] again"):
        mock_hook(script).run("fal-ai/flux", {"x": loop})
    assert script.calls == 0


def test_too_deep_arguments_are_an_input_error_not_a_recursion_error() -> None:
    script = no_network()
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(FalInputError, match=r"nested more than \d+ levels deep") as err:
        mock_hook(script).submit("fal-ai/flux", {"deep": deep})
    assert "arguments['deep']['n']" in str(err.value)
    assert len(str(err.value)) < 1000
    assert script.calls == 0


def test_shared_but_not_circular_values_are_fine() -> None:
    script = Script(ok({"request_id": "r"}))
    shared = {"url": "https://x/y.png"}
    mock_hook(script).submit("fal-ai/flux", {"a": shared, "b": [shared, shared]})
    assert script.body() == {"a": shared, "b": [shared, shared]}


def test_circular_realtime_messages_are_an_input_error() -> None:
    message: dict[str, Any] = {}
    message["self"] = message
    with pytest.raises(FalInputError, match=r"message\['self'\] is message again"):
        check_msgpack(message, AppId.parse("fal-ai/fast-lcm"))


# -- reference URLs and upload hosts (origins) -----------------------------------------------------
@pytest.mark.parametrize(
    "tampered",
    [
        "http://evil.test/queue/fal-ai/flux/requests/r",  # another host
        "https://fal.test/queue/fal-ai/flux/requests/r",  # another scheme (port 443, not 80)
        "http://fal.test:8080/queue/fal-ai/flux/requests/r",  # another port
        "http://fal.test@evil.test/queue/fal-ai/flux/requests/r",  # user info hiding the real host
        "http://fal.test/queue/fal-ai/flux/requests/r?fal_webhook=http://evil.test/",  # a query
        "http://fal.test/queue/fal-ai/flux/requests/r#x",  # a fragment
        "not a url",
    ],
)
def test_reference_urls_that_are_not_plain_queue_urls_are_rebuilt(tampered: str) -> None:
    script = Script(ok({"x": 1}))
    hook = mock_hook(script)
    assert hook.get_result({"app_id": "fal-ai/flux/dev", "request_id": "r", "response_url": tampered}) == {
        "x": 1
    }
    assert [str(r.url) for r in script.requests] == ["http://fal.test/queue/fal-ai/flux/requests/r"]


def test_reference_urls_on_the_queue_origin_are_kept_whatever_its_spelling() -> None:
    """Origins are compared normalised: scheme and host case, the default port."""
    script = Script(ok({"x": 1}))
    hook = mock_hook(script)
    spelled = "HTTP://FAL.test:80/queue/fal-ai/flux/dev/requests/r"
    hook.get_result({"app_id": "fal-ai/flux/dev", "request_id": "r", "response_url": spelled})
    # Kept, not rebuilt: a rebuilt URL would drop the sub-path 'dev'.
    assert [r.url.path for r in script.requests] == ["/queue/fal-ai/flux/dev/requests/r"]
    assert script.requests[0].headers["authorization"] == f"Key {KEY}"


def _storage_elsewhere(request: Any) -> Any:
    """A CDN whose storage API hands back an upload URL on another host (fal_client follows it)."""
    url = str(request.url)
    if "/storage/auth/token" in url:
        return ok({"token": "cdn-tok", "token_type": "Bearer", "expires_at": "2999-01-01T00:00:00+00:00"})
    if url.endswith("/files/upload/multipart"):
        return ok({"access_url": "https://storage.elsewhere.test/f/big.bin", "uploadId": "u"})
    return ok({}, headers={"ETag": '"e"'})


async def test_upload_parts_to_a_storage_host_elsewhere_never_carry_the_key(
    monkeypatch: pytest.MonkeyPatch, async_transport: Any
) -> None:
    from fal_provider.hooks import _upload

    monkeypatch.setattr(_upload, "MULTIPART_THRESHOLD", 10)
    monkeypatch.setattr(_upload, "MULTIPART_PART_SIZE", 10)
    sync_script, async_script = Script(_storage_elsewhere), Script(_storage_elsewhere)
    assert mock_hook(sync_script).upload(b"x" * 25) == "https://storage.elsewhere.test/f/big.bin"
    async_transport(async_script)
    assert await FalHook().aupload(b"x" * 25) == "https://storage.elsewhere.test/f/big.bin"
    for script in (sync_script, async_script):
        elsewhere = [r for r in script.requests if r.url.host == "storage.elsewhere.test"]
        assert len(elsewhere) == 4  # three parts and the completion
        for request in elsewhere:
            assert request.headers["authorization"] == "Bearer cdn-tok"
        assert all(KEY not in str(dict(r.headers)) for r in script.requests[1:])


def test_the_header_check_cache_never_skips_a_header_set_it_has_not_found_valid() -> None:
    """Calls remember header sets found valid (a poll repeats the same ones); a bad set, or a valid
    set with one value changed to a bad one, is checked and refused every time."""
    import httpx

    from fal_provider.hooks import _transport

    def call(headers: dict[str, Any]) -> _transport.Call:
        return _transport.Call(
            "GET", "https://queue.fal.run/x", "status", _transport.IDEMPOTENT, headers, httpx.Timeout(5)
        )

    call({"X-Fal-Runner": "ok"})
    call({"X-Fal-Runner": "ok"})  # remembered
    for _ in range(2):
        with pytest.raises(FalInputError):
            call({"X-Fal-Runner": "ok\r\nInjected: 1"})
    with pytest.raises(FalInputError):
        call({"X-Fal-Runner": "ok", "Bad Name": "v"})
    assert ("X-Fal-Runner", "ok\r\nInjected: 1") not in {
        h for items in _transport._VALID_HEADER_SETS for h in items
    }
