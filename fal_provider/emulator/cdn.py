"""The emulator's file store and the fal CDN / storage endpoints that fill it.

Generated images and uploaded files live in memory and are served under ``/cdn/files/...``, so
models can pass URLs to each other exactly as on fal.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


@dataclass
class StoredFile:
    data: bytes
    content_type: str
    name: str


@dataclass
class PendingMultipart:
    file_id: str
    name: str
    content_type: str
    parts: dict[int, bytes] = field(default_factory=dict)


class FileStore:
    """In-memory files addressed by ``{id}/{name}``."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.multipart: dict[str, PendingMultipart] = {}

    def new_id(self) -> str:
        return secrets.token_hex(8)

    def put(
        self, data: bytes, content_type: str, name: str, base_url: str, file_id: str | None = None
    ) -> str:
        file_id = file_id or self.new_id()
        safe_name = name.replace("/", "_") or "file.bin"
        self.files[file_id] = StoredFile(data, content_type, safe_name)
        return self.url(base_url, file_id, safe_name)

    @staticmethod
    def url(base_url: str, file_id: str, name: str) -> str:
        return f"{base_url}/cdn/files/{file_id}/{quote(name)}"

    def lookup_url(self, url: str) -> StoredFile | None:
        """A stored file for any URL whose path is ``.../cdn/files/{id}/...``, whatever the host."""
        path = urlsplit(url).path
        marker = "/cdn/files/"
        if marker not in path:
            return None
        file_id = path.split(marker, 1)[1].split("/", 1)[0]
        return self.files.get(file_id)

    def clear(self) -> None:
        self.files.clear()
        self.multipart.clear()


def etag_for(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def serve_file(store: FileStore, file_id: str) -> Response:
    stored = store.files.get(file_id)
    if stored is None:
        return JSONResponse({"detail": "File not found"}, status_code=404)
    # Set the header verbatim: Starlette's media_type would append a charset to text/* types.
    headers = {"content-type": stored.content_type, "ETag": etag_for(stored.data)}
    return Response(stored.data, headers=headers)


async def upload_single(store: FileStore, request: Request, base_url: str) -> Response:
    data = await request.body()
    content_type = request.headers.get("content-type", "application/octet-stream")
    name = request.headers.get("x-fal-file-name") or "upload.bin"
    url = store.put(data, content_type, name, base_url)
    return JSONResponse({"access_url": url, "content_type": content_type, "file_size": len(data)})


def multipart_create(store: FileStore, request: Request, base_url: str) -> Response:
    file_id = store.new_id()
    name = (request.headers.get("x-fal-file-name") or "upload.bin").replace("/", "_")
    content_type = request.headers.get("content-type", "application/octet-stream")
    upload_id = secrets.token_hex(8)
    store.multipart[upload_id] = PendingMultipart(file_id, name, content_type)
    return JSONResponse({"access_url": FileStore.url(base_url, file_id, name), "uploadId": upload_id})


async def multipart_part(store: FileStore, request: Request, upload_id: str, part: int) -> Response:
    pending = store.multipart.get(upload_id)
    if pending is None:
        return JSONResponse({"detail": "Unknown upload id"}, status_code=404)
    data = await request.body()
    pending.parts[part] = data
    return Response(status_code=200, headers={"ETag": etag_for(data)})


async def multipart_complete(store: FileStore, request: Request, upload_id: str, base_url: str) -> Response:
    pending = store.multipart.get(upload_id)
    if pending is None:
        return JSONResponse({"detail": "Unknown upload id"}, status_code=404)
    body = await request.json()
    numbers = [int(part["partNumber"]) for part in body.get("parts", [])]
    missing = [n for n in numbers if n not in pending.parts]
    if missing or not numbers:
        return JSONResponse({"detail": f"Missing parts: {missing or 'none listed'}"}, status_code=400)
    for part in body["parts"]:
        if part.get("etag") != etag_for(pending.parts[int(part["partNumber"])]):
            return JSONResponse({"detail": f"ETag mismatch for part {part['partNumber']}"}, status_code=400)
    data = b"".join(pending.parts[n] for n in sorted(numbers))
    url = store.put(data, pending.content_type, pending.name, base_url, file_id=pending.file_id)
    del store.multipart[upload_id]
    return JSONResponse({"access_url": url})
