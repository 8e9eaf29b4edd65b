"""The receiver under attack, over real HTTP (uvicorn on a loopback port) with a real metadata DB.

fal signs every customer's callbacks with the same keys, so the attacker here holds what any fal
account holds: callbacks genuinely signed by fal (the emulator's real private key) but for another
user id, captured callbacks to replay, and a socket to send slow, large or half-finished bodies.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider.emulator.webhooks import sign_webhook, webhook_payload
from tests.fakes.jwks import CountingJWKS
from tests.integration.webhooks.test_webhook_receiver import asset_events
from tests.integration.webhooks.webhook_db_helpers import (
    CHANNEL,
    ServedApp,
    channel_query,
    count_records,
    emulator_settings,
    make_run,
    serve_receiver,
    task_state,
)

FOREIGN_USER = "another-fal-account"


def new_request_id() -> str:
    return str(uuid.uuid4())


def callback(
    key: Ed25519PrivateKey, request_id: str, *, user_id: str = "emulator-user", body: bytes | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = body if body is not None else json.dumps(webhook_payload(request_id, 200, {"ok": 1})).encode()
    return raw, {"Content-Type": "application/json", **sign_webhook(raw, request_id, key, user_id=user_id)}


class Serve:
    """Starts a receiver with the emulator's settings (``overrides`` replace some) for one test."""

    def __init__(self, fal_emulator: Any, stack: ExitStack) -> None:
        self.fal_emulator, self.stack = fal_emulator, stack

    def __call__(self, **overrides: Any) -> ServedApp:
        return self.stack.enter_context(serve_receiver(emulator_settings(self.fal_emulator, **overrides)))


@pytest.fixture
def serve(airflow_db: Any, fal_emulator: Any) -> Iterator[Serve]:
    with ExitStack() as stack:
        yield Serve(fal_emulator, stack)


# -- who may wake what ---------------------------------------------------------------------------


def test_callback_signed_by_fal_for_another_account_cannot_wake_a_task(
    serve: Serve, client: httpx.Client, fal_emulator: Any
) -> None:
    served = serve()
    rid = new_request_id()
    task = make_run({"wait": rid})["wait"]
    assert task is not None
    body, headers = callback(fal_emulator.signing_key, rid, user_id=FOREIGN_USER)

    answer = client.post(served.url, content=body, headers=headers, params=task.query)

    assert answer.status_code == 403, answer.text
    assert count_records(rid) == 0
    assert task_state(task.run_id, "wait")[0] == "deferred"
    body, headers = callback(fal_emulator.signing_key, rid)
    assert client.post(served.url, content=body, headers=headers, params=task.query).status_code == 200
    assert task_state(task.run_id, "wait")[0] == "scheduled"


def test_channel_callback_from_another_account_fires_nothing_even_with_a_leaked_url(
    serve: Serve, client: httpx.Client, fal_emulator: Any
) -> None:
    served = serve()
    rid = new_request_id()
    body, headers = callback(fal_emulator.signing_key, rid, user_id=FOREIGN_USER)

    answer = client.post(
        served.url, content=body, headers=headers, params=channel_query(fal_emulator, CHANNEL)
    )

    assert answer.status_code == 403, answer.text
    assert count_records(rid) == 0 and asset_events(rid) == []


def test_channel_callback_needs_the_token_of_its_own_channel(
    serve: Serve, client: httpx.Client, fal_emulator: Any
) -> None:
    served = serve()
    rid = new_request_id()
    body, headers = callback(fal_emulator.signing_key, rid)
    other_token = channel_query(fal_emulator, "some-other-channel")["token"]

    for params in (
        {"channel": CHANNEL},  # no token: an old-style or guessed URL
        {"channel": CHANNEL, "token": other_token},  # a captured callback replayed onto another channel
        {"channel": CHANNEL, "token": "0" * 64},
    ):
        answer = client.post(served.url, content=body, headers=headers, params=params)
        assert answer.status_code == 403, (params, answer.text)
    assert count_records(rid) == 0 and asset_events(rid) == []

    answer = client.post(
        served.url, content=body, headers=headers, params=channel_query(fal_emulator, CHANNEL)
    )
    assert answer.json()["status"] == "accepted"
    assert len(asset_events(rid)) == 1


def test_without_an_allow_list_channel_callbacks_are_refused_saying_how_to_configure(
    serve: Serve, client: httpx.Client, fal_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve(allowed_user_ids=frozenset())
    rid = new_request_id()
    body, headers = callback(fal_emulator.signing_key, rid)
    with caplog.at_level(logging.WARNING, logger="fal_provider.webhooks.receiver"):
        answer = client.post(
            served.url, content=body, headers=headers, params=channel_query(fal_emulator, CHANNEL)
        )
    assert answer.status_code == 403
    assert count_records(rid) == 0 and asset_events(rid) == []
    assert any(
        "webhook_allowed_user_ids" in r.getMessage() and "emulator-user" in r.getMessage()
        for r in caplog.records
    ), "the refusal must say which setting to configure, and with which user id"


def test_without_a_secret_channel_callbacks_are_refused(
    serve: Serve, client: httpx.Client, fal_emulator: Any
) -> None:
    served = serve(webhook_secret=None)
    rid = new_request_id()
    body, headers = callback(fal_emulator.signing_key, rid)
    answer = client.post(
        served.url, content=body, headers=headers, params=channel_query(fal_emulator, CHANNEL)
    )
    assert answer.status_code == 403 and "webhook_secret" in answer.text
    assert count_records(rid) == 0 and asset_events(rid) == []


def test_without_an_allow_list_only_callbacks_a_deferred_task_awaits_are_accepted(
    serve: Serve, client: httpx.Client, fal_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve(allowed_user_ids=frozenset())
    rid, stray = new_request_id(), new_request_id()
    tasks = make_run({"wait": rid, "other": None})
    waiting, not_deferred = tasks["wait"], tasks["other"]
    assert waiting is not None and not_deferred is None
    other_query = {**waiting.query, "task_id": "other"}

    # another account's request, sent to a task that is not deferred, or to no task at all
    body, headers = callback(fal_emulator.signing_key, stray, user_id=FOREIGN_USER)
    for params in (other_query, waiting.query, {}):
        assert client.post(served.url, content=body, headers=headers, params=params).status_code == 403, (
            params
        )
    assert count_records(stray) == 0, "nothing may be written for a callback nobody awaits"

    body, headers = callback(fal_emulator.signing_key, rid)
    with caplog.at_level(logging.WARNING, logger="fal_provider.webhooks.receiver"):
        first = client.post(served.url, content=body, headers=headers, params=waiting.query)
        again = client.post(served.url, content=body, headers=headers, params=waiting.query)
    assert (first.json()["status"], again.json()["status"]) == ("accepted", "duplicate")
    assert task_state(waiting.run_id, "wait")[0] == "scheduled"
    warnings = [r for r in caplog.records if "no fal user id allow-list" in r.getMessage()]
    assert len(warnings) <= 1


# -- cheap checks first, bounded reads -----------------------------------------------------------


def raw_request(port: int, head: dict[str, str], content_length: int, query: str = "") -> socket.socket:
    """Send a request line and headers announcing ``content_length`` bytes, and no body (yet)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"POST /fal/webhook{query} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in head.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def status_of(sock: socket.socket, timeout: float) -> int | None:
    """The answer's status code, or None if the server has not answered within ``timeout``."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return None
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def test_headers_are_judged_before_any_body_byte_is_read(serve: Serve, fal_emulator: Any) -> None:
    served = serve()
    rid = new_request_id()
    _, good = callback(fal_emulator.signing_key, rid)
    _, foreign = callback(fal_emulator.signing_key, rid, user_id=FOREIGN_USER)
    missing = {k: v for k, v in good.items() if k != "X-Fal-Webhook-Signature"}
    stale = {**good, "X-Fal-Webhook-Timestamp": str(int(time.time()) - 3600)}
    cases = {
        "missing header": (missing, 401),
        "stale timestamp": (stale, 401),
        "foreign user": (foreign, 403),
    }
    for name, (head, expected) in cases.items():
        sock = raw_request(served.port, head, 60_000)  # announced, never sent
        try:
            assert status_of(sock, timeout=3) == expected, f"{name}: the receiver waited for the body"
        finally:
            sock.close()
    sock = raw_request(served.port, good, 10 * 1024 * 1024)
    try:
        assert status_of(sock, timeout=3) == 413
    finally:
        sock.close()


def test_slow_sender_is_dropped_at_the_read_deadline(serve: Serve, fal_emulator: Any) -> None:
    served = serve(body_read_timeout_seconds=1.0)
    rid = new_request_id()
    body, headers = callback(fal_emulator.signing_key, rid)
    sock = raw_request(served.port, headers, len(body))
    started = time.monotonic()
    answer: int | None = None
    try:
        for byte in body[:20]:  # one byte every 0.2 s: the whole body would take minutes
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if (answer := status_of(sock, timeout=0.2)) is not None:
                break
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert answer == 408, "a trickling sender must be answered and dropped, not waited for"
    assert elapsed < 3
    assert count_records(rid) == 0


def test_concurrent_body_reads_are_bounded(serve: Serve, client: httpx.Client, fal_emulator: Any) -> None:
    served = serve(max_concurrent_bodies=2, body_slot_wait_seconds=0.3, body_read_timeout_seconds=20)
    rid = new_request_id()
    body, headers = callback(fal_emulator.signing_key, rid)
    holders = [raw_request(served.port, headers, len(body)) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(body[:10])  # started, never finished: each holds a read slot
        time.sleep(0.3)
        answer = client.post(served.url, content=body, headers=headers)
        assert answer.status_code == 503, answer.text
        assert answer.headers.get("retry-after")
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the slots free up once the holders are gone
        answer = client.post(served.url, content=body, headers=headers)
        if answer.status_code != 503:
            break
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_flood_of_large_unauthenticated_bodies_keeps_memory_bounded(serve: Serve) -> None:
    """40 senders of 9 MiB bodies with fresh, well-formed but forged signature headers at once."""
    served = serve(max_body_bytes=10 * 1024 * 1024, max_concurrent_bodies=2, body_slot_wait_seconds=0.5)
    body = b'{"request_id":"x","pad":"' + b"a" * (9 * 1024 * 1024 - 40) + b'"}'
    fake = sign_webhook(body, "x", Ed25519PrivateKey.generate(), user_id="emulator-user")
    baseline, peak, stop = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    statuses: list[int] = []

    def send() -> None:
        # a raw socket: sendall() sends the one shared body without copying it, so the RSS
        # measured is the receiver's (an HTTP client library would copy each body first)
        sock = raw_request(served.port, fake, len(body))
        try:
            sock.sendall(body)
            statuses.append(status_of(sock, timeout=60) or 0)
        except OSError:
            statuses.append(0)  # dropped mid-send: what an early 503 does to a sender
        finally:
            sock.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    senders = [threading.Thread(target=send) for _ in range(40)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(120)
    stop.set()
    sampler.join(5)
    growth_mib = (peak[0] - baseline) / 2**20
    print(f"flood of 40 x 9 MiB: RSS growth {growth_mib:.1f} MiB, answers {sorted(set(statuses))}")
    assert 200 not in statuses
    assert set(statuses) <= {0, 401, 503}
    assert growth_mib < 60, f"RSS grew {growth_mib:.0f} MiB: body reads are not bounded"


# -- signed but hostile bodies, and the JWKS under forged floods ----------------------------------


@pytest.mark.parametrize("depth", [30_000, 200])
def test_deeply_nested_signed_body_is_a_400(
    serve: Serve, client: httpx.Client, fal_emulator: Any, depth: int
) -> None:
    served = serve()
    rid = new_request_id()
    nested = "[" * depth + "]" * depth
    raw = f'{{"request_id": "{rid}", "status": "OK", "payload": {nested}}}'.encode()
    body, headers = callback(fal_emulator.signing_key, rid, body=raw)
    answer = client.post(
        served.url, content=body, headers=headers, params=channel_query(fal_emulator, CHANNEL)
    )
    assert answer.status_code == 400, answer.text
    assert count_records(rid) == 0


def test_forged_flood_with_the_jwks_down_fetches_it_once(
    airflow_db: Any, fal_emulator: Any, client: httpx.Client
) -> None:
    with CountingJWKS(status=503) as jwks:
        with serve_receiver(emulator_settings(fal_emulator, jwks_url=jwks.url)) as app:
            for _ in range(15):
                body, headers = callback(Ed25519PrivateKey.generate(), new_request_id())
                assert client.post(app.url, content=body, headers=headers).status_code == 401
        assert jwks.hits == 1, f"{jwks.hits} JWKS fetches for 15 forged calls"
