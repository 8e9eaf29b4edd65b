"""Registry of emulated apps and endpoint-id resolution (longest registered prefix wins)."""

from __future__ import annotations

from fal_provider.emulator.apps.base import AppResponse, EmulatedApp, InputError, RunContext, StreamAbort
from fal_provider.emulator.apps.models import model_apps
from fal_provider.emulator.apps.testing_apps import EchoApp, FailApp, RealtimeApp, StreamApp

__all__ = [
    "AppRegistry",
    "AppResponse",
    "EchoApp",
    "EmulatedApp",
    "InputError",
    "RunContext",
    "StreamAbort",
    "default_registry",
]

NAMESPACES = ("workflows", "comfy")


class AppRegistry:
    """Maps endpoint ids to apps; ``resolve`` splits a URL path into (app, sub-path)."""

    def __init__(self, apps: list[EmulatedApp]) -> None:
        self._apps = {app.app_id: app for app in apps}

    def register(self, app: EmulatedApp) -> None:
        self._apps[app.app_id] = app

    def all(self) -> list[EmulatedApp]:
        return list(self._apps.values())

    def resolve(self, path: str) -> tuple[EmulatedApp, str] | None:
        segments = [s for s in path.strip("/").split("/") if s]
        for cut in range(len(segments), 1, -1):
            app = self._apps.get("/".join(segments[:cut]))
            if app is not None:
                return app, "/".join(segments[cut:])
        return None


def base_path(endpoint_id: str) -> str:
    """``[namespace/]owner/app`` of an endpoint id: the part status/result/cancel URLs use."""
    segments = endpoint_id.strip("/").split("/")
    keep = 3 if segments[0] in NAMESPACES else 2
    return "/".join(segments[:keep])


def default_registry() -> AppRegistry:
    return AppRegistry([EchoApp(), FailApp(), StreamApp(), RealtimeApp(), *model_apps()])
