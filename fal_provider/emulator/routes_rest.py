"""fal's REST host (``rest.fal.ai``) under ``/rest`` and the CDN (``v3.fal.media``) under ``/cdn``."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fal_provider.emulator import cdn
from fal_provider.emulator.auth import auth_error
from fal_provider.emulator.state import EmulatorState
from fal_provider.emulator.webhooks import jwks

CDN_TOKEN_TTL_S = 3600
MAX_REALTIME_TTL_S = 24 * 3600


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def rest_routes(state: EmulatorState) -> list[Route]:
    async def realtime_token(request: Request) -> Response:
        denied = await state.gate(request, "token")
        if denied is not None:
            return denied
        state.stats.incr("tokens")
        body = await _json_body(request)
        apps = body.get("allowed_apps")
        ttl = body.get("token_expiration", 120)
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps) or not apps:
            detail = [{"loc": ["body", "allowed_apps"], "msg": "Field required", "type": "missing"}]
            return JSONResponse({"detail": detail}, status_code=422)
        if not isinstance(ttl, int) or not 1 <= ttl <= MAX_REALTIME_TTL_S:
            detail = [
                {"loc": ["body", "token_expiration"], "msg": "Invalid expiration", "type": "value_error"}
            ]
            return JSONResponse({"detail": detail}, status_code=422)
        token = state.signer.issue({"scope": "realtime", "allowed_apps": apps}, ttl)
        return JSONResponse(token)

    async def storage_token(request: Request) -> Response:
        denied = await state.gate(request, "token")
        if denied is not None:
            return denied
        token = state.signer.issue({"scope": "cdn"}, CDN_TOKEN_TTL_S)
        expires = datetime.now(timezone.utc) + timedelta(seconds=CDN_TOKEN_TTL_S - 60)
        return JSONResponse(
            {
                "token": token,
                "token_type": "Bearer",
                "base_url": f"{state.base_url(request)}/cdn",
                "expires_at": expires.isoformat(),
            }
        )

    async def storage_initiate(request: Request) -> Response:
        denied = await state.gate(request, "upload")
        if denied is not None:
            return denied
        body = await _json_body(request)
        name = str(body.get("file_name") or "upload.bin").replace("/", "_")
        content_type = str(body.get("content_type") or "application/octet-stream")
        file_id = state.files.new_id()
        claims = {"scope": "put", "file_id": file_id, "name": name, "content_type": content_type}
        put_token = state.signer.issue(claims, CDN_TOKEN_TTL_S)
        base = state.base_url(request)
        return JSONResponse(
            {
                "upload_url": f"{base}/cdn/uploads/{file_id}/{quote(name)}?token={put_token}",
                "file_url": cdn.FileStore.url(base, file_id, name),
            }
        )

    async def jwks_endpoint(request: Request) -> Response:
        return JSONResponse(jwks([state.signing_key]))

    return [
        Route("/rest/tokens", realtime_token, methods=["POST"]),
        Route("/rest/tokens/", realtime_token, methods=["POST"]),
        Route("/rest/storage/auth/token", storage_token, methods=["POST"]),
        Route("/rest/storage/upload/initiate", storage_initiate, methods=["POST"]),
        Route("/rest/.well-known/jwks.json", jwks_endpoint, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks_endpoint, methods=["GET"]),
    ]


def cdn_routes(state: EmulatorState) -> list[Route]:
    def cdn_auth_error(request: Request) -> Response | None:
        """CDN calls carry the storage token (``Bearer``); a fal key is accepted too."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            claims = state.signer.verify(token.strip())
            if claims is not None and claims.get("scope") == "cdn":
                return None
            return JSONResponse({"detail": "Invalid or expired CDN token"}, status_code=401)
        detail = auth_error(header or None, state.config.key)
        return None if detail is None else JSONResponse({"detail": detail}, status_code=401)

    async def guarded(request: Request) -> Response | None:
        fault = await state.inject_fault(request, "upload")
        return fault if fault is not None else cdn_auth_error(request)

    async def upload(request: Request) -> Response:
        denied = await guarded(request)
        if denied is not None:
            return denied
        state.stats.incr("uploads")
        return await cdn.upload_single(state.files, request, state.base_url(request))

    async def multipart_create(request: Request) -> Response:
        denied = await guarded(request)
        if denied is not None:
            return denied
        return cdn.multipart_create(state.files, request, state.base_url(request))

    async def file_endpoint(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        rest = request.path_params["rest"]
        if request.method == "GET":
            return cdn.serve_file(state.files, file_id)
        if "/multipart/" not in f"/{rest}":
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)
        denied = cdn_auth_error(request)
        if denied is not None:
            return denied
        tail = f"/{rest}".split("/multipart/", 1)[1].split("/")
        if request.method == "PUT" and len(tail) == 2 and tail[1].isdigit():
            return await cdn.multipart_part(state.files, request, tail[0], int(tail[1]))
        if request.method == "POST" and tail[1:] == ["complete"]:
            state.stats.incr("uploads")
            return await cdn.multipart_complete(state.files, request, tail[0], state.base_url(request))
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def presigned_put(request: Request) -> Response:
        claims = state.signer.verify(request.query_params.get("token", ""))
        file_id = request.path_params["file_id"]
        if claims is None or claims.get("scope") != "put" or claims.get("file_id") != file_id:
            return JSONResponse({"detail": "Invalid or expired upload URL"}, status_code=403)
        data = await request.body()
        content_type = request.headers.get("content-type") or claims["content_type"]
        state.files.put(data, content_type, claims["name"], state.base_url(request), file_id=file_id)
        state.stats.incr("uploads")
        return Response(status_code=200)

    return [
        Route("/cdn/files/upload", upload, methods=["POST"]),
        Route("/cdn/files/upload/multipart", multipart_create, methods=["POST"]),
        Route("/cdn/files/{file_id}/{rest:path}", file_endpoint, methods=["GET", "PUT", "POST"]),
        Route("/cdn/uploads/{file_id}/{name:path}", presigned_put, methods=["PUT"]),
    ]
