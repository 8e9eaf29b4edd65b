"""Verification of fal's signed webhooks, free of Airflow so it can be tested and reused anywhere.

fal signs ``request-id \\n user-id \\n timestamp \\n sha256-hex(raw body)`` with Ed25519 and publishes
its public keys as a JWKS. The header carries no key id, so every published key is tried; a
signature that no cached key accepts triggers one JWKS refresh (keys rotate), rate limited so a
flood of forged calls cannot turn the receiver into a JWKS amplifier. Anything that cannot be
verified, including an unreachable JWKS, is rejected: a webhook is never accepted unverified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
#: fal documents a ±300 s window between the signed timestamp and the receiver's clock.
TIMESTAMP_TOLERANCE_SECONDS = 300
#: fal asks receivers not to cache its keys longer than a day, because they rotate.
MAX_JWKS_CACHE_SECONDS = 24 * 3600
DEFAULT_JWKS_CACHE_SECONDS = 3600
DEFAULT_JWKS_MIN_REFRESH_SECONDS = 30.0
DEFAULT_JWKS_TIMEOUT_SECONDS = 10.0

HEADER_REQUEST_ID = "x-fal-webhook-request-id"
HEADER_USER_ID = "x-fal-webhook-user-id"
HEADER_TIMESTAMP = "x-fal-webhook-timestamp"
HEADER_SIGNATURE = "x-fal-webhook-signature"
REQUIRED_HEADERS = (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)


class WebhookVerificationError(Exception):
    """A webhook that must be rejected; ``reason`` is short, fixed and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JWKSUnavailableError(WebhookVerificationError):
    """The keys could not be fetched or parsed, so nothing can be verified."""


@dataclass(frozen=True)
class SignedHeaders:
    """The four ``X-Fal-Webhook-*`` values, parsed but not yet trusted."""

    request_id: str
    user_id: str
    timestamp: str
    signature: bytes

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> SignedHeaders:
        lowered = {key.lower(): value for key, value in headers.items()}
        missing = [name for name in REQUIRED_HEADERS if not lowered.get(name, "").strip()]
        if missing:
            raise WebhookVerificationError(f"missing header {missing[0]}")
        try:
            signature = bytes.fromhex(lowered[HEADER_SIGNATURE].strip())
        except ValueError:
            raise WebhookVerificationError("signature is not hex") from None
        return cls(
            request_id=lowered[HEADER_REQUEST_ID].strip(),
            user_id=lowered[HEADER_USER_ID].strip(),
            timestamp=lowered[HEADER_TIMESTAMP].strip(),
            signature=signature,
        )


@dataclass(frozen=True)
class VerifiedWebhook:
    """What a valid signature vouches for: the body bytes came from fal for this request."""

    request_id: str
    user_id: str
    timestamp: int


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs (the timestamp is used as sent, not re-formatted)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, digest)).encode("utf-8")


def check_timestamp(timestamp: str, now: float, tolerance: float = TIMESTAMP_TOLERANCE_SECONDS) -> int:
    """Reject stale and future timestamps; a replay outside the window is worthless."""
    try:
        value = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("timestamp is not an integer") from None
    if abs(now - value) > tolerance:
        raise WebhookVerificationError("timestamp outside the allowed window")
    return value


def parse_jwks(document: Any) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS document; other key types are ignored, none at all is an error."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JWKSUnavailableError("JWKS document has no 'keys' list")
    keys: list[Ed25519PublicKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, Mapping) or entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        raw = entry.get("x")
        if not isinstance(raw, str):
            continue
        try:
            material = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(material))
        except (ValueError, binascii.Error):
            continue
    if not keys:
        raise JWKSUnavailableError("JWKS holds no usable Ed25519 key")
    return tuple(keys)


def signature_matches(message: bytes, signature: bytes, keys: tuple[Ed25519PublicKey, ...]) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


class JWKSCache:
    """fal's public keys, fetched on demand and kept for a bounded time.

    Thread-safe: the API server may verify from several threads and event loops. The lock only
    guards the cached tuple and timestamps; fetching happens outside it so a slow JWKS host never
    blocks readers of a fresh cache. ``min_refresh_interval`` caps forced refreshes, so forged
    signatures (which always fail) cause at most one fetch per interval.
    """

    def __init__(
        self,
        url: str = DEFAULT_JWKS_URL,
        *,
        ttl: float = DEFAULT_JWKS_CACHE_SECONDS,
        min_refresh_interval: float = DEFAULT_JWKS_MIN_REFRESH_SECONDS,
        timeout: float = DEFAULT_JWKS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 0 < ttl <= MAX_JWKS_CACHE_SECONDS:
            raise ValueError(f"JWKS cache lifetime must be in (0, {MAX_JWKS_CACHE_SECONDS}] seconds")
        self.url = url
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        self._clock = clock
        self._transport = transport
        self._async_transport = async_transport
        self._lock = threading.Lock()
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self.fetch_count = 0

    def cached_keys(self) -> tuple[Ed25519PublicKey, ...] | None:
        """Keys still within their lifetime, or None when a fetch is needed."""
        with self._lock:
            if self._fetched_at is None or self._clock() - self._fetched_at >= self.ttl:
                return None
            return self._keys

    def may_refresh(self) -> bool:
        """Whether a forced refresh is allowed now (rate limit against forged-signature floods)."""
        with self._lock:
            return (
                self._last_attempt is None or self._clock() - self._last_attempt >= self.min_refresh_interval
            )

    def get_keys(self, *, force: bool = False) -> tuple[Ed25519PublicKey, ...]:
        if not force and (keys := self.cached_keys()) is not None:
            return keys
        self._mark_attempt()
        try:
            with httpx.Client(timeout=self.timeout, transport=self._transport) as client:
                response = client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise JWKSUnavailableError("JWKS unreachable") from None
        return self._store(response)

    async def aget_keys(self, *, force: bool = False) -> tuple[Ed25519PublicKey, ...]:
        if not force and (keys := self.cached_keys()) is not None:
            return keys
        self._mark_attempt()
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._async_transport) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise JWKSUnavailableError("JWKS unreachable") from None
        return self._store(response)

    def _mark_attempt(self) -> None:
        with self._lock:
            self._last_attempt = self._clock()

    def _store(self, response: httpx.Response) -> tuple[Ed25519PublicKey, ...]:
        if response.status_code != 200:
            raise JWKSUnavailableError(f"JWKS answered HTTP {response.status_code}")
        try:
            keys = parse_jwks(response.json())
        except ValueError:
            raise JWKSUnavailableError("JWKS is not JSON") from None
        with self._lock:
            self._keys = keys
            self._fetched_at = self._clock()
            self.fetch_count += 1
        return keys


class WebhookVerifier:
    """Checks headers, timestamp window and Ed25519 signature of one webhook call."""

    def __init__(
        self,
        jwks: JWKSCache,
        *,
        tolerance: float = TIMESTAMP_TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jwks = jwks
        self.tolerance = tolerance
        self._clock = clock

    def _prepare(self, headers: Mapping[str, str], body: bytes) -> tuple[SignedHeaders, int, bytes]:
        signed = SignedHeaders.parse(headers)
        stamp = check_timestamp(signed.timestamp, self._clock(), self.tolerance)
        return signed, stamp, signed_message(signed.request_id, signed.user_id, signed.timestamp, body)

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedWebhook:
        signed, stamp, message = self._prepare(headers, body)
        if signature_matches(message, signed.signature, self.jwks.get_keys()):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        if self.jwks.may_refresh() and signature_matches(
            message, signed.signature, self.jwks.get_keys(force=True)
        ):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        raise WebhookVerificationError("signature does not match any JWKS key")

    async def averify(self, headers: Mapping[str, str], body: bytes) -> VerifiedWebhook:
        signed, stamp, message = self._prepare(headers, body)
        if signature_matches(message, signed.signature, await self.jwks.aget_keys()):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        if self.jwks.may_refresh() and signature_matches(
            message, signed.signature, await self.jwks.aget_keys(force=True)
        ):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        raise WebhookVerificationError("signature does not match any JWKS key")
