"""``Authorization: Key <id>:<secret>`` checks with fal's observed error bodies.

The key is compared in constant time and never logged or echoed back.
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

MISSING_DETAIL = "Missing Authorization header: expected 'Key <key_id>:<key_secret>'."
FORMAT_DETAIL = "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."
WRONG_KEY_DETAIL = "No user found for Key ID and Secret"


def auth_error(header: str | None, expected_key: str | None) -> str | None:
    """The 401 detail for this header, or None when it is acceptable.

    Without a configured key any well-formed key passes, so users can run the emulator
    with whatever ``FAL_KEY`` their DAGs already carry.
    """
    if not header:
        return MISSING_DETAIL
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "key":
        return FORMAT_DETAIL
    key_id, sep, secret = credentials.strip().partition(":")
    if not sep or not key_id or not secret or ":" in secret:
        return FORMAT_DETAIL
    if expected_key is not None and not hmac.compare_digest(
        credentials.strip().encode(), expected_key.encode()
    ):
        return WRONG_KEY_DETAIL
    return None


def check_key(conn: HTTPConnection, expected_key: str | None) -> JSONResponse | None:
    """A ready 401 response, or None when the caller is authenticated."""
    detail = auth_error(conn.headers.get("authorization"), expected_key)
    if detail is None:
        return None
    return JSONResponse({"detail": detail}, status_code=401)
