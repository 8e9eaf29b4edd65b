"""Starlette application factory: fal's four hosts under path prefixes on one port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from fal_provider.emulator.apps import AppRegistry
from fal_provider.emulator.config import EmulatorConfig
from fal_provider.emulator.faults import FaultConfig
from fal_provider.emulator.netfaults import CaptureRawSend
from fal_provider.emulator.realtime import realtime_routes
from fal_provider.emulator.routes_admin import admin_routes
from fal_provider.emulator.routes_page import page_routes
from fal_provider.emulator.routes_platform import platform_routes
from fal_provider.emulator.routes_queue import queue_routes
from fal_provider.emulator.routes_rest import cdn_routes, rest_routes
from fal_provider.emulator.routes_run import run_routes
from fal_provider.emulator.state import EmulatorState


class EmulatorApp(CaptureRawSend):
    """The ASGI app handed to uvicorn; ``state`` gives in-process access to the emulator."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await state.aclose()

        routes: list[BaseRoute] = [
            *admin_routes(state),
            *page_routes(state),
            *queue_routes(state),
            *realtime_routes(state),
            *run_routes(state),
            *rest_routes(state),
            *cdn_routes(state),
            *platform_routes(state),
        ]
        super().__init__(Starlette(routes=routes, lifespan=lifespan))


def create_app(
    config: EmulatorConfig | None = None,
    faults: FaultConfig | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    registry: AppRegistry | None = None,
) -> EmulatorApp:
    """Build a fresh emulator; nothing is shared between two apps."""
    return EmulatorApp(EmulatorState(config, faults, signing_key, registry))
