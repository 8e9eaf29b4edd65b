"""Everything one emulator instance owns, shared by all route modules."""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, Response

from fal_provider.emulator.apps import AppRegistry, RunContext, default_registry
from fal_provider.emulator.auth import check_key
from fal_provider.emulator.billing import Ledger
from fal_provider.emulator.cdn import FileStore
from fal_provider.emulator.config import EmulatorConfig
from fal_provider.emulator.faults import FaultConfig, FaultRule
from fal_provider.emulator.netfaults import DropConnection, DropMidResponse, answer_slot, nginx_page
from fal_provider.emulator.queue import QueuedRequest, QueueEngine
from fal_provider.emulator.stats import Stats
from fal_provider.emulator.tokens import TokenSigner
from fal_provider.emulator.webhooks import WebhookDispatcher, generate_signing_key, webhook_payload


class EmulatorState:
    """Config, counters, faults, files, tokens, queue and webhook delivery of one emulator."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        faults: FaultConfig | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        registry: AppRegistry | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.faults = faults or FaultConfig()
        self._initial_config = copy.deepcopy(self.config)
        self._initial_faults = self.faults.to_json()
        self.registry = registry or default_registry()
        self.stats = Stats()
        self.ledger = Ledger()
        self.files = FileStore()
        self.signer = TokenSigner()
        self.signing_key = signing_key or generate_signing_key()
        self.engine = QueueEngine(
            self.config.concurrency_for,
            self._context_for,
            self._on_complete,
            account_limit=lambda: self.config.account_concurrency,
            latency_for=self.config.sample_latency,
        )
        self.webhooks = WebhookDispatcher(self.signing_key, self._webhook_settings, self._on_webhook_event)
        self._http: httpx.AsyncClient | None = None

    # -- helpers used by routes -------------------------------------------------------------------

    def base_url(self, conn: HTTPConnection) -> str:
        """Public HTTP base for URLs the emulator hands out (CDN files), also from a WebSocket."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        url = conn.base_url
        if url.scheme in ("ws", "wss"):
            url = url.replace(scheme="https" if url.scheme == "wss" else "http")
        return str(url).rstrip("/")

    def check_auth(self, conn: HTTPConnection) -> Response | None:
        return check_key(conn, self.config.key)

    async def inject_fault(
        self, conn: HTTPConnection, endpoint: str, app_id: str | None = None
    ) -> Response | Any:
        """The response of a fault that fires for this call, or None (the call then proceeds).

        An ``after_accept`` fault also returns None: the call runs and is answered as usual, and the
        answer is then lost on the way out (see :class:`~fal_provider.emulator.netfaults.AnswerSlot`).
        """
        rule = self.faults.pick(endpoint, app_id)
        if rule is None:
            return None
        self.stats.faults[rule.kind] += 1
        if rule.kind == "after_accept":
            slot = answer_slot(conn.scope)
            if slot is None:
                raise RuntimeError("after_accept faults need the emulator's outer ASGI wrapper")
            # An explicit ``delay_s`` holds the answer back first: the call is accepted and counted,
            # and the client waits that long for an answer that comes late or never.
            slot.hold_s = rule.delay_s if "delay_s" in rule.model_fields_set else 0.0
            slot.lose_with = None if rule.answer == "late" else rule.answer
            return None
        return await fault_response(rule)

    async def gate(self, conn: HTTPConnection, endpoint: str, app_id: str | None = None) -> Response | Any:
        """Injected fault for this call (ingress comes first, as on fal), then the auth check."""
        fault = await self.inject_fault(conn, endpoint, app_id)
        if fault is not None:
            return fault
        return self.check_auth(conn)

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """Input files: data URIs, this emulator's CDN (directly), or plain HTTP."""
        if url.startswith("data:"):
            header, _, payload = url[5:].partition(",")
            content_type = header.split(";")[0] or "application/octet-stream"
            if header.endswith(";base64"):
                return base64.b64decode(payload), content_type
            return unquote_to_bytes(payload), content_type
        stored = self.files.lookup_url(url)
        if stored is not None:
            return stored.data, stored.content_type
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=True, timeout=30)
        response = await self._http.get(url)
        response.raise_for_status()
        return response.content, response.headers.get("content-type", "application/octet-stream")

    def context(self, request_id: str, base_url: str, log_sink: Any = None) -> RunContext:
        return RunContext(
            request_id=request_id,
            base_url=base_url,
            config=self.config,
            files=self.files,
            log_sink=log_sink,
            fetcher=self.fetch,
        )

    # -- queue and webhook callbacks ---------------------------------------------------------------

    def _context_for(self, request: QueuedRequest) -> RunContext:
        return self.context(request.request_id, request.base_url, request.add_log)

    def _on_complete(self, request: QueuedRequest) -> None:
        if request.response is not None:
            seconds = (request.completed_at or 0.0) - (request.started_at or request.completed_at or 0.0)
            self.ledger.bill(
                request.request_id,
                request.app_id,
                request.arguments,
                request.response,
                seconds,
                request.headers,
            )
        if not request.webhook_url or request.response is None:
            return
        rule = self.faults.pick("webhook", request.app_id)
        if rule is not None:
            self.stats.faults[rule.kind] += 1
        if rule is not None and rule.kind == "webhook_drop":
            self.stats.webhooks["dropped"] += 1
            request.webhook_events.append({"event": "dropped"})
            return
        response = request.response
        payload = webhook_payload(
            request.request_id, response.status_code, response.body, response.webhook_payload_error
        )
        self.webhooks.deliver(request.webhook_url, payload)
        if rule is not None and rule.kind == "webhook_duplicate":
            self.stats.webhooks["duplicated"] += 1
            self.webhooks.deliver(request.webhook_url, payload)

    def _webhook_settings(self) -> tuple[int, float, float, str]:
        cfg = self.config
        return cfg.webhook_attempts, cfg.webhook_base_delay_s, cfg.webhook_timeout_s, cfg.user_id

    def _on_webhook_event(self, event: str, request_id: str, detail: dict[str, Any]) -> None:
        self.stats.webhooks[
            {"attempt": "attempts", "success": "successes", "failure": "failures"}[event]
        ] += 1
        request = self.engine.requests.get(request_id)
        if request is not None:
            request.webhook_events.append({"event": event, **detail})

    # -- admin ------------------------------------------------------------------------------------

    async def reset(self) -> None:
        """Forget requests, files and counters; restore the startup config and faults."""
        await self.engine.clear()
        await self.webhooks.cancel_pending()
        self.files.clear()
        self.ledger.clear()
        self.stats.reset()
        fresh = copy.deepcopy(self._initial_config)
        for name, value in vars(fresh).items():
            setattr(self.config, name, value)
        self.faults = FaultConfig.from_json(self._initial_faults)

    async def aclose(self) -> None:
        await self.engine.clear()
        await self.webhooks.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None


async def fault_response(rule: FaultRule) -> Response | Any:
    """The response a fired HTTP fault produces; None for "slow" (the call then proceeds)."""
    if rule.kind == "slow":
        await asyncio.sleep(rule.delay_s)
        return None
    if rule.kind == "429":
        return JSONResponse(
            {"detail": "Too many requests (emulated)"},
            status_code=429,
            headers={"Retry-After": f"{rule.retry_after:g}", "x-fal-request-id": "emulated-fault"},
        )
    if rule.kind == "500":
        return JSONResponse(
            {"detail": "Internal server error (emulated)", "error_type": "internal_error"},
            status_code=500,
            headers={"x-fal-request-id": "emulated-fault", "X-Fal-Error-Type": "internal_error"},
        )
    if rule.kind in ("502", "503"):
        return HTMLResponse(nginx_page(int(rule.kind)), status_code=int(rule.kind))
    if rule.kind == "drop":
        return DropConnection()
    if rule.kind == "drop_mid":
        return DropMidResponse()
    return None
