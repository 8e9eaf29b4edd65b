"""Webhook delivery: fal's payload shapes, Ed25519 signatures verifiable via the JWKS, retries, faults."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fal_provider.emulator.testing import FalEmulator
from fal_provider.emulator.webhooks import generate_signing_key, load_or_create_signing_key, sign_webhook
from tests.integration.emulator.helpers import submit, wait_for
from tests.integration.emulator.webhook_receiver import WebhookReceiver


def verify(headers: dict[str, str], body: bytes, jwks_url: str) -> None:
    """Verification exactly as fal documents it; raises InvalidSignature when forged."""
    lowered = {k.lower(): v for k, v in headers.items()}
    digest = hashlib.sha256(body).hexdigest()
    message = "\n".join(
        [
            lowered["x-fal-webhook-request-id"],
            lowered["x-fal-webhook-user-id"],
            lowered["x-fal-webhook-timestamp"],
            digest,
        ]
    ).encode()
    assert abs(int(lowered["x-fal-webhook-timestamp"]) - time.time()) < 300
    signature = bytes.fromhex(lowered["x-fal-webhook-signature"])
    for key in httpx.get(jwks_url).json()["keys"]:
        public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=="))
        try:
            public.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise InvalidSignature("no JWKS key verified the signature")


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


def test_ok_webhook_is_signed_and_verifiable(
    client: httpx.Client, emu: FalEmulator, receiver: WebhookReceiver
):
    sub = submit(client, "emulator/echo", {"v": 1}, params={"fal_webhook": receiver.url})
    wait_for(lambda: receiver.deliveries)
    delivery = receiver.deliveries[0]
    assert receiver.payloads()[0] == {
        "request_id": sub["request_id"],
        "gateway_request_id": sub["request_id"],
        "status": "OK",
        "payload": {"v": 1},
    }
    assert delivery["headers"]["X-Fal-Webhook-Request-Id"] == sub["request_id"]
    assert delivery["headers"]["X-Fal-Webhook-User-Id"] == "emulator-user"
    verify(delivery["headers"], delivery["body"], emu.jwks_url)
    with pytest.raises(InvalidSignature):
        verify(delivery["headers"], delivery["body"] + b" ", emu.jwks_url)
    assert emu.request_info(sub["request_id"])["webhook_url"] == receiver.url
    wait_for(lambda: emu.stats()["webhook_deliveries"]["successes"] == 1)


def test_error_and_payload_error_shapes(client: httpx.Client, receiver: WebhookReceiver):
    failed = submit(client, "emulator/fail", {"kind": "validation"}, params={"fal_webhook": receiver.url})
    wait_for(lambda: receiver.deliveries)
    error = receiver.payloads()[0]
    assert error["request_id"] == failed["request_id"]
    assert error["status"] == "ERROR" and error["error"] == "Invalid status code: 422"
    assert error["payload"]["detail"][0]["loc"] == ["body", "prompt"]
    submit(client, "emulator/echo", {"webhook_payload_error": True}, params={"fal_webhook": receiver.url})
    wait_for(lambda: len(receiver.deliveries) == 2)
    unserialisable = receiver.payloads()[1]
    assert unserialisable["status"] == "OK" and unserialisable["payload"] is None
    assert unserialisable["payload_error"]


def test_retries_on_500_until_success(client: httpx.Client, emu: FalEmulator):
    emu.configure(webhook_base_delay_s=0.05)
    with WebhookReceiver(statuses=[500, 503]) as receiver:
        sub = submit(client, "emulator/echo", {}, params={"fal_webhook": receiver.url})
        wait_for(lambda: len(receiver.deliveries) == 3)
        assert {p["request_id"] for p in receiver.payloads()} == {sub["request_id"]}
        wait_for(lambda: emu.stats()["webhook_deliveries"]["successes"] == 1)
        assert emu.stats()["webhook_deliveries"]["attempts"] == 3


def test_gives_up_after_configured_attempts(client: httpx.Client, emu: FalEmulator):
    emu.configure(webhook_base_delay_s=0.01, webhook_attempts=2)
    with WebhookReceiver(statuses=[500] * 10) as receiver:
        submit(client, "emulator/echo", {}, params={"fal_webhook": receiver.url})
        wait_for(lambda: emu.stats()["webhook_deliveries"]["failures"] == 1)
        assert len(receiver.deliveries) == 2
    unreachable = "http://127.0.0.1:9/never"
    submit(client, "emulator/echo", {}, params={"fal_webhook": unreachable})
    wait_for(lambda: emu.stats()["webhook_deliveries"]["failures"] == 2)


def test_drop_and_duplicate_faults(client: httpx.Client, emu: FalEmulator, receiver: WebhookReceiver):
    emu.set_faults(
        {"rules": [{"kind": "webhook_drop", "count": 1}, {"kind": "webhook_duplicate", "count": 1}]}
    )
    dropped = submit(client, "emulator/echo", {"n": 1}, params={"fal_webhook": receiver.url})
    wait_for(lambda: emu.request_info(dropped["request_id"])["webhook_events"])
    duplicated = submit(client, "emulator/echo", {"n": 2}, params={"fal_webhook": receiver.url})
    wait_for(lambda: len(receiver.deliveries) == 2)
    assert [p["request_id"] for p in receiver.payloads()] == [duplicated["request_id"]] * 2
    stats = emu.stats()
    assert stats["webhook_deliveries"]["dropped"] == 1 and stats["webhook_deliveries"]["duplicated"] == 1
    assert stats["faults_injected"] == {"webhook_drop": 1, "webhook_duplicate": 1}


def test_sign_webhook_helper_and_shared_key_file(tmp_path: Path):
    key = generate_signing_key()
    body = b'{"a":1}'
    headers = sign_webhook(body, "rid", key, user_id="u", timestamp=1700000000)
    assert headers["X-Fal-Webhook-Timestamp"] == "1700000000"
    message = f"rid\nu\n1700000000\n{hashlib.sha256(body).hexdigest()}".encode()
    key.public_key().verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)
    path = tmp_path / "signing.pem"
    first = load_or_create_signing_key(path)
    second = load_or_create_signing_key(path)
    assert first.public_key().public_bytes_raw() == second.public_key().public_bytes_raw()
    assert (path.stat().st_mode & 0o777) == 0o600
    emulator = FalEmulator(signing_key_file=str(path))
    assert emulator.signing_key.public_key().public_bytes_raw() == first.public_key().public_bytes_raw()
