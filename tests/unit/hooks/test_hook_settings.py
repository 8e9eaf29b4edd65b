"""Connection + environment resolution, and the key staying out of every repr and message."""

from __future__ import annotations

import json

import pytest

from fal_provider.exceptions import FalAuthError, FalMissingCredentialsError
from fal_provider.hooks._calls import DEFAULT_QUEUE_URL, DEFAULT_RUN_URL, resolve_settings
from fal_provider.hooks.fal import FalHook
from tests.unit.hooks.hook_fakes import (
    KEY,
    QUEUE,
    Script,
    connection_json,
    mock_hook,
    ok,
    spy_aget_connection,
)


def test_connection_password_host_and_extras() -> None:
    settings = FalHook().settings
    assert settings.key == KEY
    assert settings.queue_url == QUEUE
    assert settings.run_url == "http://fal.test/run"
    assert (settings.retry_limit, settings.retry_max_wait, settings.timeout) == (5, 30.0, 120.0)


def test_hook_arguments_override_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"retry_limit": 9, "timeout": 10, "headers": json.dumps({"X-A": "conn", "X-B": "conn"})}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json(extra=extra))
    settings = FalHook(retry_limit=2, timeout=3.5, headers={"X-B": "hook"}).settings
    assert (settings.retry_limit, settings.timeout) == (2, 3.5)
    assert settings.headers == {"X-A": "conn", "X-B": "hook"}


def test_host_without_scheme_gets_https() -> None:
    settings = resolve_settings(
        conn_id="c", password="k:s", host="queue.example.com/", extras={}, overrides={}, env={}
    )
    assert settings.queue_url == "https://queue.example.com"
    assert settings.run_url == DEFAULT_RUN_URL


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"FAL_KEY": "a:b"}, "a:b"), ({"FAL_KEY_ID": "id", "FAL_KEY_SECRET": "sec"}, "id:sec")],
)
def test_key_from_environment_when_connection_has_none(env: dict[str, str], expected: str) -> None:
    settings = resolve_settings(conn_id="c", password=None, host=None, extras={}, overrides={}, env=env)
    assert settings.key == expected
    assert settings.queue_url == DEFAULT_QUEUE_URL


def test_connection_password_wins_over_environment() -> None:
    settings = resolve_settings(
        conn_id="c", password="conn:key", host=None, extras={}, overrides={}, env={"FAL_KEY": "env:key"}
    )
    assert settings.key == "conn:key"


def test_missing_default_connection_falls_back_to_fal_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_FAL_DEFAULT")
    monkeypatch.setenv("FAL_KEY", "env-id:env-secret")
    settings = FalHook().settings
    assert settings.key == "env-id:env-secret"
    assert settings.queue_url == DEFAULT_QUEUE_URL


def test_missing_key_names_connection_and_fal_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json(password=None))
    with pytest.raises(FalMissingCredentialsError) as info:
        _ = FalHook().settings
    assert "fal_default" in str(info.value)
    assert "FAL_KEY" in str(info.value)


def test_missing_named_connection_is_not_silently_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "env-id:env-secret")
    with pytest.raises(Exception, match="fal_typo"):
        _ = FalHook("fal_typo").settings


async def test_async_settings_use_aget_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import BaseHook

    calls = spy_aget_connection(monkeypatch)
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, _id: pytest.fail("sync lookup")))
    settings = await FalHook().aget_settings()
    assert calls == ["fal_default"]
    assert settings.key == KEY


def test_invalid_headers_extra_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", connection_json(extra={"headers": "{not json"}))
    with pytest.raises(ValueError, match="headers"):
        _ = FalHook().settings


def test_key_absent_from_reprs_and_from_errors_after_401() -> None:
    script = Script(ok({"detail": "No user found for Key ID and Secret"}, status=401))
    hook = mock_hook(script)
    for text in (repr(hook), str(hook), repr(hook.settings), str(hook.settings)):
        assert KEY not in text and "super-secret" not in text
    with pytest.raises(FalAuthError) as info:
        hook.get_status({"app_id": "fal-ai/flux", "request_id": "r1"})
    err = info.value
    assert script.requests[0].headers["authorization"] == f"Key {KEY}"
    for text in (str(err), repr(err), repr(err.__dict__), repr(err.__cause__)):
        assert "super-secret" not in text
    ok_flag, message = hook.test_connection()
    assert ok_flag is False and "super-secret" not in message
