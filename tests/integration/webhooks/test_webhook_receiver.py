"""The receiver over real HTTP, with a real metadata database and the emulator's signing key/JWKS.

Each test checks the database after the call: what was recorded, which task was resumed, and
that a rejected call changed nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider.emulator.webhooks import sign_webhook, webhook_payload
from fal_provider.webhooks.store import WebhookRecord, record_key
from tests.integration.webhooks.webhook_db_helpers import (
    ASSET_DAG_ID,
    CHANNEL,
    ServedApp,
    channel_query,
    count_records,
    emulator_settings,
    make_run,
    serve_receiver,
    task_state,
)


def new_request_id() -> str:
    return str(uuid.uuid4())


def signed(
    key: Ed25519PrivateKey, request_id: str, *, body: bytes | None = None, **payload: Any
) -> tuple[bytes, dict[str, str]]:
    raw = (
        body
        if body is not None
        else json.dumps(webhook_payload(request_id, 200, payload or {"ok": 1})).encode()
    )
    return raw, {"Content-Type": "application/json", **sign_webhook(raw, request_id, key)}


def post(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], params: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(url, content=body, headers=headers, params=params)


def test_verified_callback_is_recorded_and_resumes_the_waiting_task(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid = new_request_id()
    task = make_run({"wait": rid})["wait"]
    assert task is not None
    body, headers = signed(fal_emulator.signing_key, rid)

    answer = post(client, receiver.url, body, headers, task.query)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "accepted", "request_id": rid}
    state, next_kwargs, trigger_id = task_state(task.run_id, "wait")
    assert state == "scheduled" and trigger_id is None
    assert next_kwargs["event"] == {
        "status": "success",
        "request": {"request_id": rid, "app_id": "fal-ai/fast-sdxl"},
        "source": "webhook",
    }
    assert count_records(rid) == 1


def test_error_callback_resumes_with_a_failed_event(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid = new_request_id()
    task = make_run({"wait": rid})["wait"]
    assert task is not None
    raw = json.dumps(webhook_payload(rid, 422, {"detail": [{"msg": "field required"}]})).encode()
    body, headers = signed(fal_emulator.signing_key, rid, body=raw)

    assert post(client, receiver.url, body, headers, task.query).status_code == 200

    event = task_state(task.run_id, "wait")[1]["event"]
    assert event["status"] == "failed"
    assert event["error"] == "Invalid status code: 422"


def test_duplicate_delivery_is_harmless(receiver: ServedApp, client: httpx.Client, fal_emulator: Any) -> None:
    rid = new_request_id()
    task = make_run({"wait": rid})["wait"]
    assert task is not None
    body, headers = signed(fal_emulator.signing_key, rid)
    assert post(client, receiver.url, body, headers, task.query).json()["status"] == "accepted"
    after_first = task_state(task.run_id, "wait")

    again = post(client, receiver.url, body, headers, task.query)

    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert count_records(rid) == 1
    assert task_state(task.run_id, "wait") == after_first


def test_callback_before_the_task_deferred_is_recorded_not_lost(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    from airflow.utils.session import create_session

    from fal_provider.webhooks.store import get_record

    rid = new_request_id()
    make_run({"wait": None})
    body, headers = signed(fal_emulator.signing_key, rid, images=[{"url": "https://cdn/x.png"}])

    answer = post(client, receiver.url, body, headers)

    assert answer.status_code == 200
    with create_session() as session:
        record = get_record(rid, session=session)
    assert isinstance(record, WebhookRecord)
    assert record.succeeded and record.payload == {"images": [{"url": "https://cdn/x.png"}]}
    assert abs(record.received_at - time.time()) < 600


def test_replayed_body_cannot_wake_a_task_waiting_for_another_request(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    waiting_for = new_request_id()
    task = make_run({"wait": waiting_for})["wait"]
    assert task is not None
    other = new_request_id()
    body, headers = signed(fal_emulator.signing_key, other)

    answer = post(client, receiver.url, body, headers, task.query)

    assert answer.status_code == 200, "the callback itself is genuine and is recorded"
    assert count_records(other) == 1
    state, _, trigger_id = task_state(task.run_id, "wait")
    assert state == "deferred" and trigger_id == task.trigger_id


@pytest.fixture
def waiting(fal_emulator: Any, receiver: ServedApp) -> Iterator[tuple[str, Any]]:
    """A task deferred on a fresh request id; each rejection test checks it is still waiting."""
    rid = new_request_id()
    task = make_run({"wait": rid})["wait"]
    assert task is not None
    yield rid, task
    state, _, trigger_id = task_state(task.run_id, "wait")
    assert state == "deferred" and trigger_id == task.trigger_id, "a rejected call must not resume"
    assert count_records(rid) == 0, "a rejected call must not be recorded"


def test_forged_signature_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client
) -> None:
    rid, task = waiting
    body, headers = signed(Ed25519PrivateKey.generate(), rid)
    assert post(client, receiver.url, body, headers, task.query).status_code == 401


def test_stale_timestamp_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid, task = waiting
    body = json.dumps(webhook_payload(rid, 200, {})).encode()
    headers = sign_webhook(body, rid, fal_emulator.signing_key, timestamp=int(time.time()) - 3600)
    assert post(client, receiver.url, body, headers, task.query).status_code == 401


def test_tampered_body_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid, task = waiting
    body, headers = signed(fal_emulator.signing_key, rid)
    tampered = body.replace(b'"OK"', b'"ERROR"')
    assert post(client, receiver.url, tampered, headers, task.query).status_code == 401


def test_unsigned_call_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client
) -> None:
    rid, task = waiting
    body = json.dumps(webhook_payload(rid, 200, {})).encode()
    assert post(client, receiver.url, body, {"X-Fal-Webhook-Request-Id": rid}, task.query).status_code == 401


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"status": "OK"}', b'{"request_id": "%s", "status": "IN_QUEUE"}'],
    ids=["not-json", "not-object", "no-request-id", "bad-status"],
)
def test_malformed_signed_body_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any, raw: bytes
) -> None:
    rid, task = waiting
    body = raw.replace(b"%s", rid.encode())
    body, headers = signed(fal_emulator.signing_key, rid, body=body)
    answer = post(client, receiver.url, body, headers, task.query)
    assert answer.status_code == 400, answer.text


def test_body_for_another_request_than_signed_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid, task = waiting
    raw = json.dumps(webhook_payload(new_request_id(), 200, {})).encode()
    body, headers = signed(fal_emulator.signing_key, rid, body=raw)
    assert post(client, receiver.url, body, headers, task.query).status_code == 400


def test_oversized_body_is_rejected_by_content_length(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid, task = waiting
    body, headers = signed(fal_emulator.signing_key, rid, blob="x" * 70_000)
    assert post(client, receiver.url, body, headers, task.query).status_code == 413


def test_oversized_body_is_rejected_while_streaming(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid, task = waiting
    body, headers = signed(fal_emulator.signing_key, rid, blob="x" * 70_000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    answer = client.post(receiver.url, content=chunks(), headers=headers, params=task.query)
    assert "content-length" not in {k.lower() for k in answer.request.headers}
    assert answer.status_code == 413


def test_bad_task_identity_in_url_is_rejected(
    waiting: tuple[str, Any], receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid, task = waiting
    body, headers = signed(fal_emulator.signing_key, rid)
    params = {**task.query, "map_index": "first"}
    assert post(client, receiver.url, body, headers, params).status_code == 400


def test_jwks_down_rejects_and_the_task_keeps_waiting(
    airflow_db: Any, fal_emulator: Any, client: httpx.Client
) -> None:
    rid = new_request_id()
    task = make_run({"wait": rid})["wait"]
    assert task is not None
    settings = emulator_settings(fal_emulator, jwks_url="http://127.0.0.1:9/.well-known/jwks.json")
    body, headers = signed(fal_emulator.signing_key, rid)
    with serve_receiver(settings) as down:
        assert post(client, down.url, body, headers, task.query).status_code == 401
    assert count_records(rid) == 0
    assert task_state(task.run_id, "wait")[0] == "deferred"


def asset_events(request_id: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "fal_webhook_it_done")
        ).all()
        return [dict(row.extra) for row in rows if row.extra["payload"]["request_id"] == request_id]


def queued_asset_runs() -> int:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        query = (
            select(func.count())
            .select_from(AssetDagRunQueue)
            .where(AssetDagRunQueue.target_dag_id == ASSET_DAG_ID)
        )
        return int(session.scalar(query) or 0)


def test_channel_callback_fires_the_asset_watcher_once(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid = new_request_id()
    body, headers = signed(fal_emulator.signing_key, rid, images=["a.png"])

    first = post(client, receiver.url, body, headers, channel_query(fal_emulator, CHANNEL))
    second = post(client, receiver.url, body, headers, channel_query(fal_emulator, CHANNEL))

    assert (first.json()["status"], second.json()["status"]) == ("accepted", "duplicate")
    events = asset_events(rid)
    assert len(events) == 1, "a duplicate delivery must not fire a second asset event"
    assert events[0]["from_trigger"] is True
    assert events[0]["payload"]["status"] == "OK"
    assert events[0]["payload"]["payload"] == {"images": ["a.png"]}
    assert queued_asset_runs() >= 1


@pytest.fixture
def watcher_stored_by_an_older_release(receiver: ServedApp) -> Iterator[None]:
    """The channel's watcher row as a release before the trigger's move to ``triggers/`` stored it."""
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import update

    from fal_provider.webhooks.wake import EVENT_TRIGGER_CLASSPATH

    legacy = "fal_provider.webhooks.triggers.FalWebhookEventTrigger"

    def move(old: str, new: str) -> int:
        with create_session() as session:
            return int(
                session.execute(
                    update(Trigger).where(Trigger.classpath == old).values(classpath=new)
                ).rowcount
            )

    assert move(EVENT_TRIGGER_CLASSPATH, legacy) >= 1
    yield
    move(legacy, EVENT_TRIGGER_CLASSPATH)


@pytest.mark.usefixtures("watcher_stored_by_an_older_release")
def test_channel_callback_fires_a_watcher_stored_under_the_former_classpath(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid = new_request_id()
    body, headers = signed(fal_emulator.signing_key, rid)
    assert post(client, receiver.url, body, headers, channel_query(fal_emulator, CHANNEL)).status_code == 200
    assert len(asset_events(rid)) == 1


def test_unknown_channel_records_without_event(
    receiver: ServedApp, client: httpx.Client, fal_emulator: Any
) -> None:
    rid = new_request_id()
    body, headers = signed(fal_emulator.signing_key, rid)
    assert (
        post(client, receiver.url, body, headers, channel_query(fal_emulator, "nobody-listens")).status_code
        == 200
    )
    assert count_records(rid) == 1
    assert asset_events(rid) == []


def test_sweep_deletes_only_expired_records(receiver: ServedApp) -> None:
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    old, fresh = new_request_id(), new_request_id()
    with create_session() as session:
        for rid, age in ((old, 10 * 24 * 3600), (fresh, 60)):
            record = WebhookRecord(request_id=rid, status="OK", received_at=time.time() - age)
            session.add(Variable(key=record_key(rid), val=record.to_json()))

    deleted = receiver.receiver.sweep()

    assert deleted >= 1
    assert (count_records(old), count_records(fresh)) == (0, 1)
