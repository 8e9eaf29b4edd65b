"""fal webhook signature verification, against a JWKS served by an in-memory transport.

The signing helper here is written independently of the emulator's so that a mistake shared by
both (say, the wrong field order) cannot make the tests pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider.webhooks.verify import (
    MAX_JWKS_CACHE_SECONDS,
    JWKSCache,
    JWKSUnavailableError,
    WebhookVerificationError,
    WebhookVerifier,
    parse_jwks,
)

JWKS_URL = "https://jwks.test/.well-known/jwks.json"
BODY = json.dumps({"request_id": "req-1", "status": "OK", "payload": {"images": []}}).encode()


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def sign(
    key: Ed25519PrivateKey, body: bytes = BODY, *, request_id: str = "req-1", timestamp: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    message = f"{request_id}\nuser-1\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": "user-1",
        "X-Fal-Webhook-Timestamp": stamp,
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }


class FakeJWKS:
    """A JWKS host whose keys can rotate and which can go down; counts fetches."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.down = False
        self.fetches = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            raise httpx.ConnectError("down", request=request)
        return httpx.Response(200, json={"keys": [jwk(k) for k in self.keys]})

    def cache(self, clock: Callable[[], float] = time.monotonic, **kwargs: float) -> JWKSCache:
        return JWKSCache(
            JWKS_URL,
            clock=clock,
            transport=httpx.MockTransport(self.handler),
            async_transport=httpx.MockTransport(self.handler),
            **kwargs,
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_valid_signature_is_accepted(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    verifier = WebhookVerifier(host.cache())
    verified = verifier.verify(sign(key), BODY)
    assert (verified.request_id, verified.user_id) == ("req-1", "user-1")


async def test_valid_signature_is_accepted_async(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    verified = await WebhookVerifier(host.cache()).averify(sign(key), BODY)
    assert verified.request_id == "req-1"


def test_any_key_of_the_jwks_may_sign(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    host = FakeJWKS(other, key)
    assert WebhookVerifier(host.cache()).verify(sign(key), BODY).request_id == "req-1"


def test_signature_by_another_key_is_rejected(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        WebhookVerifier(host.cache()).verify(sign(Ed25519PrivateKey.generate()), BODY)


def test_tampered_body_is_rejected(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    tampered = BODY.replace(b'"OK"', b'"ERROR"')
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        WebhookVerifier(host.cache()).verify(sign(key), tampered)


def test_swapped_request_id_header_is_rejected(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    headers = sign(key)
    headers["X-Fal-Webhook-Request-Id"] = "req-2"
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        WebhookVerifier(host.cache()).verify(headers, BODY)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_stale_or_future_timestamp_is_rejected(key: Ed25519PrivateKey, offset: int) -> None:
    host = FakeJWKS(key)
    headers = sign(key, timestamp=int(time.time()) + offset)
    with pytest.raises(WebhookVerificationError, match="outside the allowed window"):
        WebhookVerifier(host.cache()).verify(headers, BODY)
    assert host.fetches == 0, "the window is checked before any key is fetched"


def test_timestamp_at_the_edge_of_the_window_is_accepted(key: Ed25519PrivateKey) -> None:
    fixed_now = 2_000_000_000.0
    verifier = WebhookVerifier(FakeJWKS(key).cache(), clock=lambda: fixed_now)
    assert verifier.verify(sign(key, timestamp=int(fixed_now) - 300), BODY).timestamp == int(fixed_now) - 300


@pytest.mark.parametrize(
    "header",
    [
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    ],
)
def test_each_missing_header_is_rejected(key: Ed25519PrivateKey, header: str) -> None:
    headers = sign(key)
    del headers[header]
    with pytest.raises(WebhookVerificationError, match=f"missing header {header.lower()}"):
        WebhookVerifier(FakeJWKS(key).cache()).verify(headers, BODY)


def test_non_hex_signature_and_non_integer_timestamp_are_rejected(key: Ed25519PrivateKey) -> None:
    verifier = WebhookVerifier(FakeJWKS(key).cache())
    with pytest.raises(WebhookVerificationError, match="not hex"):
        verifier.verify({**sign(key), "X-Fal-Webhook-Signature": "zz"}, BODY)
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verifier.verify({**sign(key), "X-Fal-Webhook-Timestamp": "soon"}, BODY)


def test_headers_are_case_insensitive(key: Ed25519PrivateKey) -> None:
    headers = {name.upper(): value for name, value in sign(key).items()}
    assert WebhookVerifier(FakeJWKS(key).cache()).verify(headers, BODY).request_id == "req-1"


def test_unknown_key_triggers_one_refresh_then_verifies(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    verifier = WebhookVerifier(host.cache(min_refresh_interval=0))
    verifier.verify(sign(key), BODY)
    rotated = Ed25519PrivateKey.generate()
    host.keys = [rotated]
    assert verifier.verify(sign(rotated), BODY).request_id == "req-1"
    assert host.fetches == 2


async def test_unknown_key_refresh_async(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    verifier = WebhookVerifier(host.cache(min_refresh_interval=0))
    await verifier.averify(sign(key), BODY)
    rotated = Ed25519PrivateKey.generate()
    host.keys = [rotated]
    assert (await verifier.averify(sign(rotated), BODY)).request_id == "req-1"
    assert host.fetches == 2


def test_forged_signatures_refresh_at_most_once_per_interval(key: Ed25519PrivateKey) -> None:
    clock = Clock()
    host = FakeJWKS(key)
    verifier = WebhookVerifier(host.cache(clock=clock, min_refresh_interval=30))
    verifier.verify(sign(key), BODY)
    forger = Ed25519PrivateKey.generate()
    clock.now += 31
    for _ in range(20):
        with pytest.raises(WebhookVerificationError):
            verifier.verify(sign(forger), BODY)
    assert host.fetches == 2, "one initial fetch plus a single refresh for the whole flood"


def test_jwks_down_rejects_and_never_accepts_unverified(key: Ed25519PrivateKey) -> None:
    host = FakeJWKS(key)
    host.down = True
    with pytest.raises(JWKSUnavailableError, match="unreachable"):
        WebhookVerifier(host.cache()).verify(sign(key), BODY)


async def test_jwks_http_error_rejects_async(key: Ed25519PrivateKey) -> None:
    cache = JWKSCache(JWKS_URL, async_transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    with pytest.raises(JWKSUnavailableError, match="HTTP 503"):
        await WebhookVerifier(cache).averify(sign(key), BODY)


def test_cache_lifetime_is_bounded_and_honoured(key: Ed25519PrivateKey) -> None:
    clock = Clock()
    host = FakeJWKS(key)
    cache = host.cache(clock=clock, ttl=600)
    verifier = WebhookVerifier(cache)
    verifier.verify(sign(key), BODY)
    clock.now += 599
    verifier.verify(sign(key), BODY)
    assert host.fetches == 1, "within its lifetime the cache answers"
    clock.now += 2
    verifier.verify(sign(key), BODY)
    assert host.fetches == 2, "an expired cache is fetched again"


def test_expired_cache_with_jwks_down_rejects_even_known_keys(key: Ed25519PrivateKey) -> None:
    clock = Clock()
    host = FakeJWKS(key)
    verifier = WebhookVerifier(host.cache(clock=clock, ttl=60))
    verifier.verify(sign(key), BODY)
    clock.now += 61
    host.down = True
    with pytest.raises(JWKSUnavailableError):
        verifier.verify(sign(key), BODY)


@pytest.mark.parametrize("ttl", [0, -1, MAX_JWKS_CACHE_SECONDS + 1])
def test_cache_lifetime_outside_bounds_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        JWKSCache(JWKS_URL, ttl=ttl)


def test_parse_jwks_skips_foreign_keys_and_requires_one_ed25519(key: Ed25519PrivateKey) -> None:
    doc = {
        "keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}, {"kty": "OKP", "crv": "X25519", "x": "AA"}, jwk(key)]
    }
    assert len(parse_jwks(doc)) == 1
    with pytest.raises(JWKSUnavailableError):
        parse_jwks({"keys": [{"kty": "RSA"}]})
    with pytest.raises(JWKSUnavailableError):
        parse_jwks(["not", "a", "jwks"])
