"""The key-origin rule covers fal's Platform API: the API key goes to the configured
``platform_url`` origin (as to the queue, run, REST and CDN hosts) and nowhere else, and the ADMIN
key goes to that one origin only, never to the inference hosts, never across a redirect, and never
to api.fal.ai when the connection did not name it.

A second local HTTP server (another port: a different origin) records every request and its
``Authorization`` header; the emulator serves the real Platform API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fal_provider.emulator.testing import FalEmulator
from fal_provider.exceptions import FalInputError, FalServerError
from fal_provider.hooks._calls import FalSettings
from fal_provider.hooks._transport import IDEMPOTENT, Call, default_timeout, request_headers, send
from fal_provider.hooks.fal import FalHook
from fal_provider.hooks.platform import clear_caches
from fal_provider.models import CompletedStatus
from tests.integration.hooks.test_security_hook_key_origins import Recorder, serving


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_caches()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with serving(Recorder()) as rec:
        yield rec


def conn_with(emulator: FalEmulator, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> FalHook:
    conn = json.loads(emulator.connection_json())
    conn["extra"].update(extra)
    conn["extra"] = {k: v for k, v in conn["extra"].items() if v is not None}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_PLATFORM_SEC", json.dumps(conn))
    return FalHook("fal_platform_sec")


class Seen:
    """Every request a hook's sync client sends, with its Authorization header."""

    def __init__(self, hook: FalHook) -> None:
        self.auth: list[tuple[str, str | None]] = []
        hook._client = httpx.Client(event_hooks={"request": [self._record]}, follow_redirects=True)

    def _record(self, request: httpx.Request) -> None:
        self.auth.append((str(request.url), request.headers.get("Authorization")))


def test_admin_key_goes_only_to_the_platform_origin(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = conn_with(fal_emulator_conn, monkeypatch)
    seen = Seen(hook)
    admin = f"Key {fal_emulator_conn.admin_key}"
    ref = hook.submit("emulator/echo", {"x": 1})
    while not isinstance(hook.get_status(ref), CompletedStatus):
        pass
    hook.fetch_result(ref)
    hook.run("emulator/echo", {"y": 2})
    hook.get_pricing(["emulator/echo"])
    hook.get_model_info("emulator/echo")
    hook.get_request_history("emulator/echo")
    hook.validate_arguments("fal-ai/flux/dev", {"prompt": "x"})
    events = hook.get_billing_events([ref.request_id])
    assert [e.request_id for e in events] == [ref.request_id]
    with_admin = [url for url, auth in seen.auth if auth == admin]
    assert with_admin and all(
        url.startswith(f"{fal_emulator_conn.platform_url}/models/billing-events") for url in with_admin
    )
    api_key = f"Key {fal_emulator_conn.key}"
    assert all(auth == api_key for url, auth in seen.auth if url not in with_admin)


def test_admin_calls_to_any_other_origin_are_refused_before_sending(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    hook = conn_with(fal_emulator_conn, monkeypatch)
    call = admin_call(f"{recorder.url}/models/billing-events", hook.settings)
    with httpx.Client() as client, pytest.raises(FalInputError, match="admin key") as err:
        send(client, call, hook.settings, hook.log)
    assert fal_emulator_conn.admin_key not in str(err.value)
    # On fal the inference hosts are other origins than api.fal.ai: none of them gets the admin key.
    settings = FalSettings(
        key="id:secret",
        admin_key="admin:secret",
        queue_url="https://queue.fal.run",
        platform_url="https://api.fal.ai/v1",
    )
    for url in (settings.queue_url, settings.run_url, settings.rest_url, settings.cdn_url):
        with pytest.raises(FalInputError, match="admin key"):
            request_headers(admin_call(f"{url}/models/billing-events", settings), settings)
    assert (
        request_headers(admin_call(f"{settings.platform_url}/models/billing-events", settings), settings)[
            "Authorization"
        ]
        == "Key admin:secret"
    )
    assert recorder.seen == []


def admin_call(url: str, settings: FalSettings) -> Call:
    return Call(
        method="GET",
        url=url,
        label="billing events",
        policy=IDEMPOTENT,
        headers={},
        timeout=default_timeout(settings),
        admin=True,
    )


def test_platform_origin_is_a_key_origin_only_when_configured(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    hook = conn_with(fal_emulator_conn, monkeypatch, platform_url=f"{recorder.url}/v1")
    with pytest.raises(FalServerError):  # the recorder is now the configured Platform API
        hook.get_pricing(["emulator/echo"])
    assert recorder.seen[0][2] == f"Key {fal_emulator_conn.key}"
    other = conn_with(fal_emulator_conn, monkeypatch, platform_url=None)
    seen = Seen(other)
    with pytest.raises(FalInputError, match="platform_url"):
        other.get_billing_events(["r-1"])
    assert other.price_or_none("emulator/echo") is None
    other.validate_arguments("emulator/echo", {})
    assert seen.auth == []  # nothing went to api.fal.ai (or anywhere) for this connection
    assert ("https", "api.fal.ai", 443) not in other.settings.key_origins


def test_a_redirect_off_the_platform_origin_drops_the_admin_key(
    fal_emulator_conn: FalEmulator, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    with serving(Recorder(redirect_to=recorder.url)) as redirector:
        hook = conn_with(fal_emulator_conn, monkeypatch, platform_url=f"{redirector.url}/v1")
        with pytest.raises(FalServerError):  # the redirect target answers something else
            hook.get_billing_events(["r-1"])
        assert redirector.seen[0][2] == f"Key {fal_emulator_conn.admin_key}"
    assert recorder.seen and all(auth is None for _, _, auth in recorder.seen)


def test_the_admin_key_field_is_redacted_by_airflow_by_name() -> None:
    """Airflow hides extras by name in the UI, the API and logs; the admin key's name must be one."""
    from airflow.sdk._shared.secrets_masker import should_hide_value_for_key

    from fal_provider import get_provider_info

    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert fields["admin_api_key"]["schema"]["format"] == "password"
    assert should_hide_value_for_key("admin_api_key")
