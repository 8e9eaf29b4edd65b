"""JWKS fetch discipline under forged floods: single flight (threads and coroutines share one fetch)
and the minimum refresh interval on every path, a failed fetch included (negative cache).

The JWKS host is a real HTTP server on a loopback port that counts its hits.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fal_provider.emulator.webhooks import sign_webhook
from fal_provider.webhooks.verify import (
    JWKSCache,
    JWKSUnavailableError,
    WebhookVerificationError,
    WebhookVerifier,
)
from tests.fakes.jwks import CountingJWKS

BODY = b'{"request_id":"req-1","status":"OK","payload":{}}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forged(body: bytes = BODY) -> dict[str, str]:
    """Fresh, well-formed headers signed by a key no JWKS publishes."""
    return sign_webhook(body, "req-1", Ed25519PrivateKey.generate(), user_id="emulator-user")


# -- JWKS: single flight, minimum interval on every path, failures remembered ----------------------


def test_concurrent_threads_on_a_cold_cache_share_one_fetch() -> None:
    key = Ed25519PrivateKey.generate()
    with CountingJWKS(key) as host:
        host.release.clear()  # hold the first fetch open until every thread is waiting
        cache = JWKSCache(host.url)
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(cache.get_keys())) for _ in range(8)]
        for thread in threads:
            thread.start()
        host.wait_for_hits(1)
        time.sleep(0.2)  # the other seven are now inside get_keys; none may start its own fetch
        host.release.set()
        for thread in threads:
            thread.join(10)
        assert host.hits == 1
        assert len(results) == 8 and all(len(keys) == 1 for keys in results)  # type: ignore[arg-type]


async def test_concurrent_coroutines_on_a_cold_cache_share_one_fetch() -> None:
    key = Ed25519PrivateKey.generate()
    with CountingJWKS(key) as host:
        host.release.clear()
        cache = JWKSCache(host.url)
        waiting = [asyncio.ensure_future(cache.aget_keys()) for _ in range(8)]
        await asyncio.to_thread(host.wait_for_hits, 1)
        await asyncio.sleep(0.2)
        host.release.set()
        results = await asyncio.gather(*waiting)
        assert host.hits == 1
        assert all(keys is results[0] for keys in results)


async def test_forged_calls_with_the_jwks_down_fetch_once_per_interval() -> None:
    clock = Clock()
    with CountingJWKS(status=503) as host:
        verifier = WebhookVerifier(JWKSCache(host.url, min_refresh_interval=30, clock=clock))
        for _ in range(20):
            with pytest.raises(WebhookVerificationError):
                await verifier.averify(forged(), BODY)
        assert host.hits == 1, "each forged call made the receiver fetch the JWKS again"
        clock.now += 31
        with pytest.raises(WebhookVerificationError):
            await verifier.averify(forged(), BODY)
        assert host.hits == 2


def test_a_failed_fetch_is_remembered_for_the_interval_on_the_sync_path() -> None:
    clock = Clock()
    with CountingJWKS(status=500) as host:
        cache = JWKSCache(host.url, min_refresh_interval=30, clock=clock)
        for force in (False, True, False):
            with pytest.raises(JWKSUnavailableError, match="HTTP 500"):
                cache.get_keys(force=force)
        assert host.hits == 1
        assert not cache.may_refresh()


async def test_concurrent_forged_calls_with_the_jwks_down_share_one_fetch() -> None:
    with CountingJWKS(status=503) as host:
        host.release.clear()
        verifier = WebhookVerifier(JWKSCache(host.url, min_refresh_interval=30))
        calls = [asyncio.ensure_future(verifier.averify(forged(), BODY)) for _ in range(10)]
        await asyncio.to_thread(host.wait_for_hits, 1)
        await asyncio.sleep(0.2)
        host.release.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(outcome, WebhookVerificationError) for outcome in outcomes)
        assert host.hits == 1
