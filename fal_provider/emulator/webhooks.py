"""Webhook signing (fal's Ed25519 scheme), the JWKS that verifies it, and background delivery.

``sign_webhook`` is pure so other tests can forge valid or invalid callbacks without an emulator.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

logger = logging.getLogger(__name__)

DEFAULT_USER_ID = "emulator-user"


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 key, creating it (mode 0600) if absent, so processes can share one key."""
    file = Path(path)
    if file.exists():
        key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{file} does not hold an Ed25519 private key")
        return key
    key = generate_signing_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


def jwks(keys: list[Ed25519PrivateKey]) -> dict[str, Any]:
    """fal-style JWKS: OKP/Ed25519 keys with base64url ``x``."""
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": base64.urlsafe_b64encode(public_key_bytes(key)).rstrip(b"=").decode(),
                "kid": key_id(key),
                "use": "sig",
                "alg": "EdDSA",
            }
            for key in keys
        ]
    }


def signed_message(body: bytes, request_id: str, user_id: str, timestamp: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join([request_id, user_id, timestamp, digest]).encode()


def sign_webhook(
    body: bytes,
    request_id: str,
    private_key: Ed25519PrivateKey,
    *,
    user_id: str = DEFAULT_USER_ID,
    timestamp: int | str | None = None,
) -> dict[str, str]:
    """The four ``X-Fal-Webhook-*`` headers fal would send with ``body``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = private_key.sign(signed_message(body, request_id, user_id, stamp)).hex()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": stamp,
        "X-Fal-Webhook-Signature": signature,
    }


def webhook_payload(
    request_id: str, status_code: int, body: Any, payload_error: str | None = None
) -> dict[str, Any]:
    """fal's payload: OK with the output, ERROR with ``Invalid status code``, or OK + payload_error."""
    payload: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id}
    if 200 <= status_code < 300:
        payload["status"] = "OK"
        if payload_error:
            payload["payload"] = None
            payload["payload_error"] = payload_error
        else:
            payload["payload"] = body
    else:
        payload.update(status="ERROR", error=f"Invalid status code: {status_code}", payload=body)
    return payload


class WebhookDispatcher:
    """Delivers webhooks in background tasks with exponential backoff; never blocks the queue."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        settings: Callable[[], tuple[int, float, float, str]],
        on_event: Callable[[str, str, dict[str, Any]], None],
    ) -> None:
        self._key = private_key
        self._settings = settings
        self._on_event = on_event
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def deliver(self, url: str, payload: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(url, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        attempts, base_delay, timeout, user_id = self._settings()
        body = json.dumps(payload).encode()
        request_id = payload["request_id"]
        if self._client is None:
            self._client = httpx.AsyncClient()
        for attempt in range(1, attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "fal-emulator-webhook/1",
                **sign_webhook(body, request_id, self._key, user_id=user_id),
            }
            outcome: dict[str, Any] = {"attempt": attempt, "url": url}
            try:
                response = await self._client.post(url, content=body, headers=headers, timeout=timeout)
                outcome["status_code"] = response.status_code
                ok = 200 <= response.status_code < 300
            except httpx.HTTPError as exc:
                outcome["error"] = type(exc).__name__
                ok = False
            self._on_event("attempt", request_id, outcome)
            if ok:
                self._on_event("success", request_id, outcome)
                return
            if attempt < attempts:
                await asyncio.sleep(base_delay * 2 ** (attempt - 1))
        self._on_event("failure", request_id, {"url": url, "attempts": attempts})

    async def cancel_pending(self) -> None:
        """Abandon deliveries in flight (used by reset so one test's callbacks never reach the next)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel_pending()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
