"""Verification of fal's signed webhooks, free of Airflow so it can be tested and reused anywhere.

fal signs ``request-id \\n user-id \\n timestamp \\n sha256-hex(raw body)`` with Ed25519 and publishes
its public keys as a JWKS. The header carries no key id, so every published key is tried; a
signature that no cached key accepts triggers one JWKS refresh (keys rotate), single-flight and
rate limited, failures included, so a flood of forged calls cannot turn the receiver into a JWKS
amplifier. Anything that cannot be
verified, including an unreachable JWKS, is rejected: a webhook is never accepted unverified.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes | bytearray) -> bytes:
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

    Thread-safe and shared by every thread and event loop of the API server. Fetches are
    single-flight: one caller fetches, concurrent callers (sync or async, any loop) wait for that
    same fetch. Every path honours ``min_refresh_interval``, counted from the last attempt
    whatever its outcome: within it, a forced refresh returns the keys already held, and after a
    failed fetch the failure itself is remembered and raised again without a new fetch. So forged
    signatures and an unreachable JWKS host cause at most one fetch per interval.

    :param url: where fal publishes its keys; the receiver passes the configured one, whose default
        is :data:`fal_provider.hooks.fal.DEFAULT_JWKS_URL`.
    """

    def __init__(
        self,
        url: str,
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
        self._last_error: JWKSUnavailableError | None = None
        self._inflight: Future[tuple[Ed25519PublicKey, ...]] | None = None
        #: Completed fetches, successful or not (what a JWKS host would count).
        self.fetch_count = 0

    def cached_keys(self) -> tuple[Ed25519PublicKey, ...] | None:
        """Keys still within their lifetime, or None when a fetch is needed."""
        with self._lock:
            return self._fresh_keys(self._clock())

    def _fresh_keys(self, now: float) -> tuple[Ed25519PublicKey, ...] | None:
        if self._fetched_at is None or now - self._fetched_at >= self.ttl:
            return None
        return self._keys

    def may_refresh(self) -> bool:
        """Whether a fetch may start now (none running, and the interval since the last has passed)."""
        with self._lock:
            return self._inflight is None and not self._rate_limited(self._clock())

    def _rate_limited(self, now: float) -> bool:
        return self._last_attempt is not None and now - self._last_attempt < self.min_refresh_interval

    def _plan(
        self, force: bool
    ) -> tuple[tuple[Ed25519PublicKey, ...] | None, Future[tuple[Ed25519PublicKey, ...]] | None, bool]:
        """``(keys, future, mine)``: keys to use now, or a fetch to wait for (``mine``: run it)."""
        with self._lock:
            now = self._clock()
            fresh = self._fresh_keys(now)
            if fresh is not None and not force:
                return fresh, None, False
            if self._inflight is not None:
                return None, self._inflight, False
            if self._rate_limited(now):
                if fresh is not None:
                    return fresh, None, False  # a refresh within the interval: keep what we have
                if self._last_error is not None:
                    raise JWKSUnavailableError(self._last_error.reason)
                if self._keys:
                    return self._keys, None, False  # ttl shorter than the interval
            self._last_attempt = now
            self._inflight = Future()
            return None, self._inflight, True

    def _finish(
        self,
        future: Future[tuple[Ed25519PublicKey, ...]],
        keys: tuple[Ed25519PublicKey, ...] | None,
        error: JWKSUnavailableError | None,
        *,
        remember: bool = True,
    ) -> None:
        """Publish a fetch's outcome; a failure is remembered (negative cache) unless interrupted."""
        with self._lock:
            self.fetch_count += 1
            if keys is not None:
                self._keys, self._fetched_at, self._last_error = keys, self._clock(), None
            elif remember:
                self._last_error = error
            self._inflight = None
        if keys is not None:
            future.set_result(keys)
        else:
            future.set_exception(error or JWKSUnavailableError("JWKS fetch failed"))

    def get_keys(self, *, force: bool = False) -> tuple[Ed25519PublicKey, ...]:
        keys, future, mine = self._plan(force)
        if keys is not None:
            return keys
        assert future is not None
        if mine:
            self._run_fetch(future, self._fetch)
        return future.result()

    async def aget_keys(self, *, force: bool = False) -> tuple[Ed25519PublicKey, ...]:
        keys, future, mine = self._plan(force)
        if keys is not None:
            return keys
        assert future is not None
        if mine:
            try:
                fetched: tuple[Ed25519PublicKey, ...] | None = await self._afetch()
                error = None
            except JWKSUnavailableError as err:
                fetched, error = None, err
            except BaseException:
                self._finish(future, None, JWKSUnavailableError("JWKS fetch was interrupted"), remember=False)
                raise
            self._finish(future, fetched, error)
        return await asyncio.wrap_future(future)

    def _run_fetch(
        self, future: Future[tuple[Ed25519PublicKey, ...]], fetch: Callable[[], tuple[Ed25519PublicKey, ...]]
    ) -> None:
        try:
            keys = fetch()
        except JWKSUnavailableError as err:
            self._finish(future, None, err)
        except BaseException:
            self._finish(future, None, JWKSUnavailableError("JWKS fetch was interrupted"), remember=False)
            raise
        else:
            self._finish(future, keys, None)

    def _fetch(self) -> tuple[Ed25519PublicKey, ...]:
        try:
            with httpx.Client(timeout=self.timeout, transport=self._transport) as client:
                response = client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise JWKSUnavailableError("JWKS unreachable") from None
        return _keys_of(response)

    async def _afetch(self) -> tuple[Ed25519PublicKey, ...]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._async_transport) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise JWKSUnavailableError("JWKS unreachable") from None
        return _keys_of(response)


def _keys_of(response: httpx.Response) -> tuple[Ed25519PublicKey, ...]:
    if response.status_code != 200:
        raise JWKSUnavailableError(f"JWKS answered HTTP {response.status_code}")
    try:
        return parse_jwks(response.json())
    except (ValueError, RecursionError):
        raise JWKSUnavailableError("JWKS is not JSON") from None


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

    def _prepare(
        self, headers: Mapping[str, str], body: bytes | bytearray
    ) -> tuple[SignedHeaders, int, bytes]:
        signed = SignedHeaders.parse(headers)
        stamp = check_timestamp(signed.timestamp, self._clock(), self.tolerance)
        return signed, stamp, signed_message(signed.request_id, signed.user_id, signed.timestamp, body)

    def check_headers(self, headers: Mapping[str, str]) -> SignedHeaders:
        """The checks that need no body: the four headers present and the timestamp in the window."""
        signed = SignedHeaders.parse(headers)
        check_timestamp(signed.timestamp, self._clock(), self.tolerance)
        return signed

    def verify(self, headers: Mapping[str, str], body: bytes | bytearray) -> VerifiedWebhook:
        signed, stamp, message = self._prepare(headers, body)
        keys = self.jwks.get_keys()
        if signature_matches(message, signed.signature, keys):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        refreshed = self.jwks.get_keys(force=True)  # a rotated key; rate limited by the cache
        if refreshed is not keys and signature_matches(message, signed.signature, refreshed):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        raise WebhookVerificationError("signature does not match any JWKS key")

    async def averify(self, headers: Mapping[str, str], body: bytes | bytearray) -> VerifiedWebhook:
        signed, stamp, message = self._prepare(headers, body)
        keys = await self.jwks.aget_keys()
        if signature_matches(message, signed.signature, keys):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        refreshed = await self.jwks.aget_keys(force=True)  # a rotated key; rate limited by the cache
        if refreshed is not keys and signature_matches(message, signed.signature, refreshed):
            return VerifiedWebhook(signed.request_id, signed.user_id, stamp)
        raise WebhookVerificationError("signature does not match any JWKS key")
