"""Short-lived signed tokens (HS256 JWTs) for realtime sessions, CDN uploads and presigned PUTs.

They are real signatures over the claims so the emulator can reject forged or expired tokens the
way fal does, without any external service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies tokens with a per-process random secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def issue(self, claims: dict[str, Any], ttl_s: float) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps({**claims, "exp": int(time.time() + ttl_s)}).encode())
        signature = hmac.new(self._secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(signature)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid unexpired token, else None."""
        try:
            header, body, signature = token.split(".")
            expected = hmac.new(self._secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                return None
            claims: dict[str, Any] = json.loads(_unb64(body))
        except (ValueError, json.JSONDecodeError):
            return None
        if claims.get("exp", 0) < time.time():
            return None
        return claims
