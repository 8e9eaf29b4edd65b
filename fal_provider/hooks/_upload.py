"""Uploads to fal's CDN, described as calls (v3 flow: storage token from REST, then the bytes).

DAGs pass local images as model inputs by uploading them first and handing the model the URL.
Up to :data:`MULTIPART_THRESHOLD` bytes go in one POST; above it, as fal's own client does, the file
goes in :data:`MULTIPART_PART_SIZE` parts: initiate, PUT each part (ETag from the answer), complete.
A local file is read one part at a time, so a multi-GB upload never sits in memory whole. Nothing here
does I/O on the network: the hook's sync and async methods send these calls with their own clients.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import httpx

from fal_provider.exceptions import FalInputError, FalServerError
from fal_provider.hooks._calls import USER_AGENT, FalSettings, join_url, json_body, merge_headers
from fal_provider.hooks._transport import IDEMPOTENT, Call, default_timeout

#: Above this size an upload goes in parts (fal_client's threshold).
MULTIPART_THRESHOLD = 100 * 1024 * 1024
#: Size of each part but the last (fal_client's).
MULTIPART_PART_SIZE = 10 * 1024 * 1024
#: Parts in flight at once per upload (fal_client's).
MULTIPART_CONCURRENCY = 10
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Renew a cached CDN token this long before fal says it expires.
TOKEN_MARGIN_S = 60.0


@dataclass(frozen=True)
class UploadSource:
    """Bytes already in memory, or a local file that is read only when (and as far as) needed."""

    name: str | None
    size: int
    data: bytes | None = field(default=None, repr=False)
    path: str | None = None

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``offset`` (to the end if ``None``); blocking file I/O for a path."""
        if self.data is not None:
            return self.data[offset : None if length is None else offset + length]
        assert self.path is not None
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(-1 if length is None else length)


def open_source(data: bytes | str | os.PathLike[str], file_name: str | None) -> UploadSource:
    """What to upload; a str/PathLike is a local file path, never content (blocking: a stat)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
        return UploadSource(name=file_name, size=len(payload), data=payload)
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Cannot upload {path!r}: not a file (str/PathLike data means a local path)"
            )
        return UploadSource(name=file_name or os.path.basename(path), size=os.path.getsize(path), path=path)
    raise FalInputError(f"upload data must be bytes or a local file path, got {type(data).__name__}")


def guess_content_type(content_type: str | None, file_name: str | None) -> str:
    if content_type:
        return content_type
    guessed = mimetypes.guess_type(file_name)[0] if file_name else None
    return guessed or DEFAULT_CONTENT_TYPE


def needs_multipart(source: UploadSource) -> bool:
    return source.size > MULTIPART_THRESHOLD


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


def _cdn_headers(token: Mapping[str, Any], *layers: Mapping[str, str] | None) -> dict[str, str]:
    """CDN calls carry the storage token, never the key."""
    return merge_headers(
        {"User-Agent": USER_AGENT},
        *layers,
        {"Authorization": f"{token.get('token_type', 'Bearer')} {token['token']}"},
    )


def _cdn_call(settings: FalSettings, url: str, label: str, headers: dict[str, str], **kwargs: Any) -> Call:
    """A CDN call: authenticated by the storage token, never by the key (``with_key=False``).

    The part and complete URLs are built from the ``access_url`` fal's storage API answers with,
    which may be on another host than the configured CDN (fal_client follows it the same way); the
    key must not go there, and never does, because no CDN call asks the transport for it.
    """
    # Uploads are idempotent: a repeated POST/PUT at worst leaves an orphan object or part.
    return Call(
        url=url,
        label=label,
        policy=IDEMPOTENT,
        headers=headers,
        timeout=default_timeout(settings),
        with_key=False,
        **kwargs,
    )


def single_upload(
    settings: FalSettings,
    source: UploadSource,
    payload: bytes,
    *,
    content_type: str,
    token: Mapping[str, Any],
) -> Call:
    """One POST of the whole payload (sources up to :data:`MULTIPART_THRESHOLD`)."""
    name = source.name
    headers = _cdn_headers(token, {"Content-Type": content_type}, {"X-Fal-File-Name": name} if name else None)
    label = f"upload of {name or 'data'} ({len(payload)} bytes)"
    url = join_url(settings.cdn_url, "files/upload")
    decode = partial(_access_url_of, label=label)
    return _cdn_call(settings, url, label, headers, method="POST", content=payload, decode=decode)


def _access_url_of(response: httpx.Response, label: str) -> str:
    return access_url(json_body(response, label), label)


class MultipartUpload:
    """fal's multipart flow for one source, as calls and answer parsers.

    The hook sends :meth:`create`, then every :meth:`part` (concurrently, at most
    :data:`MULTIPART_CONCURRENCY`), then :meth:`complete`, and decodes each answer with the call's
    ``decode``, which records the upload id and the parts' ETags here; the last one gives the URL.
    :meth:`part` reads its bytes from the source, so drivers call it off the event loop.
    """

    def __init__(
        self, settings: FalSettings, source: UploadSource, *, content_type: str, token: Mapping[str, Any]
    ) -> None:
        self.settings = settings
        self.source = source
        self.content_type = content_type
        self._token = token
        self.part_size = MULTIPART_PART_SIZE  # read once: one upload, one part size
        self.total = max(1, math.ceil(source.size / self.part_size))
        self.concurrency = max(1, min(MULTIPART_CONCURRENCY, self.total))
        self._access_url: str | None = None
        self._upload_id: str | None = None
        self._etags: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"MultipartUpload(name={self.source.name!r}, size={self.source.size}, parts={self.total})"

    @property
    def numbers(self) -> range:
        return range(1, self.total + 1)

    @property
    def _label(self) -> str:
        return f"multipart upload of {self.source.name or 'data'} ({self.source.size} bytes)"

    def _started(self) -> tuple[str, str]:
        if self._access_url is None or self._upload_id is None:
            raise RuntimeError("multipart upload not initiated")
        return self._access_url, self._upload_id

    def create(self) -> Call:
        headers = _cdn_headers(
            self._token,
            {"Content-Type": self.content_type, "Accept": "application/json"},
            {"X-Fal-File-Name": self.source.name} if self.source.name else None,
        )
        url = join_url(self.settings.cdn_url, "files/upload/multipart")
        label = f"start of {self._label}"
        return _cdn_call(self.settings, url, label, headers, method="POST", decode=self._started_by)

    def _started_by(self, response: httpx.Response) -> None:
        label = f"start of {self._label}"
        body = json_body(response, label)
        upload_id = body.get("uploadId") if isinstance(body, Mapping) else None
        if not isinstance(upload_id, str) or not upload_id:
            raise FalServerError(f"{label}: the CDN answer has no uploadId")
        self._access_url, self._upload_id = access_url(body, label), upload_id

    def part(self, number: int) -> Call:
        """The PUT of part ``number`` (1-based) with its bytes read from the source (blocking)."""
        base, upload_id = self._started()
        data = self.source.read((number - 1) * self.part_size, self.part_size)
        headers = _cdn_headers(
            self._token, {"Content-Type": self.content_type, "Accept-Encoding": "identity"}
        )
        label = f"part {number}/{self.total} of {self._label}"
        url = join_url(base, "multipart", upload_id, str(number))
        done = partial(self._part_done, number)
        return _cdn_call(self.settings, url, label, headers, method="PUT", content=data, decode=done)

    def _part_done(self, number: int, response: httpx.Response) -> None:
        etag = response.headers.get("etag")
        if not etag:
            raise FalServerError(f"part {number}/{self.total} of {self._label}: the CDN sent no ETag")
        self._etags[number] = etag

    def complete(self) -> Call:
        base, upload_id = self._started()
        missing = [n for n in self.numbers if n not in self._etags]
        if missing:
            raise RuntimeError(f"{self._label}: parts {missing} not uploaded")
        parts = [{"partNumber": n, "etag": self._etags[n]} for n in self.numbers]
        headers = _cdn_headers(self._token, {"Content-Type": "application/json"})
        url = join_url(base, "multipart", upload_id, "complete")
        content = json.dumps({"parts": parts}).encode()
        label = f"end of {self._label}"
        return _cdn_call(
            self.settings, url, label, headers, method="POST", content=content, decode=self._finish
        )

    def _finish(self, response: httpx.Response) -> str:
        """The file's URL: the one fal announced when the upload started (as fal_client returns)."""
        del response  # a 2xx is all that counts; fal_client does not read the body either
        return self._started()[0]
