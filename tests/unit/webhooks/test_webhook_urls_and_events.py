"""Callback URL building/parsing, the event the receiver resumes tasks with, and the event trigger."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from fal_provider.triggers.webhook_events import FalWebhookEventTrigger
from fal_provider.webhooks.store import WebhookRecord
from fal_provider.webhooks.urls import (
    TaskIdentity,
    WebhookSecret,
    WebhookUrlError,
    build_webhook_url,
    receiver_url,
)
from fal_provider.webhooks.wake import (
    EVENT_TRIGGER_CLASSPATH,
    EVENT_TRIGGER_CLASSPATHS,
    task_event,
    waits_for_request,
)


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://airflow.example.com", "https://airflow.example.com/fal/webhook"),
        ("https://airflow.example.com/", "https://airflow.example.com/fal/webhook"),
        ("https://example.com/airflow", "https://example.com/airflow/fal/webhook"),
        ("http://airflow-apiserver:8080/fal/webhook", "http://airflow-apiserver:8080/fal/webhook"),
    ],
)
def test_receiver_url_keeps_path_prefixes(base: str, expected: str) -> None:
    assert receiver_url(base) == expected


@pytest.mark.parametrize("base", ["", "airflow.example.com", "ftp://x", "https://x/?a=1"])
def test_unusable_base_urls_are_refused(base: str) -> None:
    with pytest.raises(WebhookUrlError):
        receiver_url(base)


def test_missing_base_url_error_names_the_connection_extra() -> None:
    with pytest.raises(WebhookUrlError, match="webhook_base_url"):
        receiver_url("")


def test_task_url_round_trips_identity_with_awkward_run_ids() -> None:
    identity = TaskIdentity("my_dag", "manual__2025-01-01T00:00:00+00:00", "gen", map_index=7)
    url = build_webhook_url("https://af.example.com", identity)
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert parts.path == "/fal/webhook"
    assert TaskIdentity.from_query(query) == identity


def test_unmapped_task_omits_map_index_and_parses_back_as_minus_one() -> None:
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1)
    query = {
        k: v[0]
        for k, v in parse_qs(
            urlsplit(build_webhook_url("https://a.b", TaskIdentity.from_task_instance(ti))).query
        ).items()
    }
    assert "map_index" not in query
    assert TaskIdentity.from_query(query) == TaskIdentity("d", "r", "t", -1)


def test_channel_url_and_exclusivity() -> None:
    secret = WebhookSecret("s" * 32)
    url = build_webhook_url("https://a.b", channel="batch-1", secret=secret)
    assert url.endswith(f"/fal/webhook?channel=batch-1&token={secret.token('batch-1')}")
    with pytest.raises(WebhookUrlError):
        build_webhook_url("https://a.b")
    with pytest.raises(WebhookUrlError):
        build_webhook_url("https://a.b", TaskIdentity("d", "r", "t"), channel="c", secret=secret)
    with pytest.raises(WebhookUrlError):
        build_webhook_url("https://a.b", channel="has space", secret=secret)


@pytest.mark.parametrize(
    "query",
    [{"dag_id": "d", "task_id": "t"}, {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": "x"}],
)
def test_partial_or_bad_identity_is_an_error(query: dict[str, str]) -> None:
    with pytest.raises(WebhookUrlError):
        TaskIdentity.from_query(query)


def test_no_identity_means_none() -> None:
    assert TaskIdentity.from_query({"channel": "c"}) is None


def test_task_event_matches_the_request_trigger_event_shape() -> None:
    request = {"request_id": "r1", "app_id": "fal-ai/x"}
    ok = task_event(WebhookRecord("r1", "OK", 1.0, payload_error="too big"), request)
    failed = task_event(WebhookRecord("r1", "ERROR", 1.0, error="Invalid status code: 422"), request)
    assert ok == {"status": "success", "request": request, "source": "webhook"}
    assert failed["status"] == "failed" and failed["error"] == "Invalid status code: 422"
    assert failed["request"] == request


def test_waits_for_request_looks_into_the_request_reference_only_for_that_id() -> None:
    kwargs = {"request": {"request_id": "r1", "app_id": "a"}, "wait_mode": "webhook"}
    assert waits_for_request(kwargs, "r1")
    assert not waits_for_request(kwargs, "r2")
    assert waits_for_request({"request_id": "r1"}, "r1")
    assert not waits_for_request("r1", "r1")


def test_event_trigger_serializes_to_the_classpath_the_receiver_looks_for() -> None:
    trigger = FalWebhookEventTrigger(channel="batch")
    classpath, kwargs = trigger.serialize()
    assert classpath == EVENT_TRIGGER_CLASSPATH
    assert FalWebhookEventTrigger(**kwargs).serialize() == (classpath, kwargs)
    module, _, name = classpath.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is FalWebhookEventTrigger


def test_event_trigger_stored_under_its_former_classpath_still_loads() -> None:
    # Trigger rows written before the move carry the old classpath; the triggerer imports it and
    # the receiver still fires it.
    import importlib

    from fal_provider.webhooks.triggers import FalWebhookEventTrigger as reexported

    legacy = "fal_provider.webhooks.triggers.FalWebhookEventTrigger"
    module, _, name = legacy.rpartition(".")
    assert reexported is FalWebhookEventTrigger
    assert legacy in EVENT_TRIGGER_CLASSPATHS
    assert getattr(importlib.import_module(module), name)(channel="batch").serialize() == (
        EVENT_TRIGGER_CLASSPATH,
        {"channel": "batch"},
    )


def test_event_trigger_rejects_bad_channel() -> None:
    with pytest.raises(WebhookUrlError):
        FalWebhookEventTrigger(channel="no/slashes")


def _env_connection(monkeypatch: pytest.MonkeyPatch, **extra: str) -> None:
    import json

    connection = {"conn_type": "fal", "password": "id:secret", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", json.dumps(connection))
    monkeypatch.delenv("AIRFLOW__FAL__WEBHOOK_SECRET", raising=False)


def test_channel_webhook_url_takes_base_url_and_secret_from_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fal_provider.webhooks.settings import channel_webhook_url

    _env_connection(monkeypatch, webhook_base_url="https://af.example.com", webhook_secret="k" * 24)
    url = channel_webhook_url("batch")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith("https://af.example.com/fal/webhook?")
    assert query == {"channel": "batch", "token": WebhookSecret("k" * 24).token("batch")}


def test_channel_webhook_url_without_a_secret_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider.webhooks.settings import channel_webhook_url

    _env_connection(monkeypatch, webhook_base_url="https://af.example.com")
    with pytest.raises(WebhookUrlError, match="'webhook_secret' extra of connection 'fal_default'"):
        channel_webhook_url("batch")


def test_config_secret_wins_over_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider.webhooks.settings import channel_secret

    _env_connection(monkeypatch, webhook_secret="c" * 20)
    monkeypatch.setenv("AIRFLOW__FAL__WEBHOOK_SECRET", "f" * 20)
    assert channel_secret().token("x") == WebhookSecret("f" * 20).token("x")


def test_receiver_and_hook_default_to_the_same_jwks_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider.hooks.fal import DEFAULT_JWKS_URL, FalHook
    from fal_provider.webhooks.settings import ReceiverSettings

    _env_connection(monkeypatch)
    assert ReceiverSettings.from_airflow().jwks_url == FalHook().settings.jwks_url == DEFAULT_JWKS_URL


def test_receiver_settings_read_allow_list_and_secret_from_config_then_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fal_provider.webhooks.settings import ReceiverSettings

    _env_connection(monkeypatch, webhook_allowed_user_ids='["conn-user"]', webhook_secret="s" * 16)
    monkeypatch.delenv("AIRFLOW__FAL__WEBHOOK_ALLOWED_USER_IDS", raising=False)
    settings = ReceiverSettings.from_airflow()
    assert settings.allowed_user_ids == {"conn-user"}
    assert settings.webhook_secret is not None and settings.webhook_secret.token_matches(
        "c", WebhookSecret("s" * 16).token("c")
    )
    monkeypatch.setenv("AIRFLOW__FAL__WEBHOOK_ALLOWED_USER_IDS", "cfg-a, cfg-b")
    assert ReceiverSettings.from_airflow().allowed_user_ids == {"cfg-a", "cfg-b"}


def test_unusable_receiver_secret_or_allow_list_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from fal_provider.webhooks.settings import ReceiverSettings

    _env_connection(monkeypatch, webhook_allowed_user_ids="[broken", webhook_secret="short")
    monkeypatch.delenv("AIRFLOW__FAL__WEBHOOK_ALLOWED_USER_IDS", raising=False)
    settings = ReceiverSettings.from_airflow()
    assert settings.allowed_user_ids == frozenset() and settings.webhook_secret is None
