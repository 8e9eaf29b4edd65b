"""Preparing uploads to fal's CDN (v3 flow: storage token from REST, then one POST of the bytes).

DAGs pass local images as model inputs by uploading them first and handing the model the URL.
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fal_provider.exceptions import FalServerError

#: fal_client switches to multipart uploads above this size; the hook sends single uploads only.
SINGLE_UPLOAD_LIMIT = 100 * 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Renew a cached CDN token this long before fal says it expires.
TOKEN_MARGIN_S = 60.0


def read_source(data: bytes | str | os.PathLike[str], file_name: str | None) -> tuple[bytes, str | None]:
    """Bytes to upload and a file name; a str/PathLike is a local file path, never content."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), file_name
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Cannot upload {path!r}: not a file (str/PathLike data means a local path)"
            )
        with open(path, "rb") as handle:
            return handle.read(), file_name or os.path.basename(path)
    raise ValueError(f"upload data must be bytes or a local file path, got {type(data).__name__}")


def guess_content_type(content_type: str | None, file_name: str | None) -> str:
    if content_type:
        return content_type
    guessed = mimetypes.guess_type(file_name)[0] if file_name else None
    return guessed or DEFAULT_CONTENT_TYPE


def check_size(data: bytes, file_name: str | None) -> None:
    if len(data) > SINGLE_UPLOAD_LIMIT:
        raise ValueError(
            f"Upload of {file_name or 'data'} is {len(data)} bytes; FalHook.upload sends files up to "
            f"{SINGLE_UPLOAD_LIMIT} bytes (fal's multipart upload is not supported yet)"
        )


def token_deadline(token: Mapping[str, Any]) -> float:
    """Monotonic time after which a cached CDN token must be renewed."""
    expires = token.get("expires_at")
    lifetime = 300.0
    if isinstance(expires, str):
        try:
            lifetime = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() - time.time()
        except ValueError:
            pass
    return time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S)


class CdnTokenCache:
    """fal's CDN token is valid for a while; one per hook saves a REST call per upload."""

    def __init__(self) -> None:
        self._token: Mapping[str, Any] | None = None
        self._deadline = 0.0

    def get(self) -> Mapping[str, Any] | None:
        return self._token if self._token is not None and time.monotonic() < self._deadline else None

    def remember(self, token: Any) -> Mapping[str, Any]:
        if not isinstance(token, Mapping) or not isinstance(token.get("token"), str):
            raise FalServerError("CDN storage token answer has no 'token' field")
        self._token, self._deadline = token, token_deadline(token)
        return token

    def __repr__(self) -> str:
        return "CdnTokenCache(<token hidden>)"


def access_url(body: Any, label: str) -> str:
    url = body.get("access_url") if isinstance(body, Mapping) else None
    if not isinstance(url, str):
        raise FalServerError(f"{label}: the CDN answer has no access_url")
    return url
