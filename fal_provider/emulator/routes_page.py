"""A request page for people: ``/_emulator/requests/{request_id}/view``.

The extra link of a task run against the emulator opens it (the emulator's connection helpers set
the connection's ``request_page_url`` to it), standing in for fal's dashboard: status, queue
position, logs, input and output, with image, video and audio previews. Like the rest of
``/_emulator`` it needs no key; it never shows request headers (they carry the caller's key).
Everything shown is escaped, and only ``http(s)`` and media ``data:`` URLs become previews.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from fal_provider.emulator.queue import IN_PROGRESS, IN_QUEUE, QueuedRequest
from fal_provider.emulator.state import EmulatorState

PAGE_PATH = "/_emulator/requests/{request_id}/view"
_KINDS = ("image", "video", "audio")
_TAGS = {
    "image": '<img src="{url}" alt="{label}">',
    "video": '<video src="{url}" controls></video>',
    "audio": '<audio src="{url}" controls></audio>',
}
_STYLE = (
    "body{font-family:sans-serif;margin:16px}pre{background:#f4f4f4;padding:8px;overflow:auto}"
    "img,video{max-width:320px;max-height:320px;border:1px solid #ccc}figure{display:inline-block}"
)


def _media_kind(item: dict[str, Any]) -> str | None:
    """The kind of a fal file object whose URL a browser may load, else None."""
    url, content_type = item.get("url"), item.get("content_type")
    if not isinstance(url, str):
        return None
    if url.startswith("data:"):
        kind = url[5:].split("/", 1)[0]
        return kind if kind in _KINDS else None
    if urlparse(url).scheme not in ("http", "https"):
        return None
    kind = content_type.split("/", 1)[0] if isinstance(content_type, str) else ""
    return kind if kind in _KINDS else None


def _files(value: Any, where: str) -> list[tuple[str, str, str]]:
    """(kind, url, where) of every media file object in a model output."""
    found: list[tuple[str, str, str]] = []
    if isinstance(value, dict):
        kind = _media_kind(value)
        if kind:
            found.append((kind, value["url"], where))
        for name, item in value.items():
            found += _files(item, f"{where}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _files(item, f"{where}[{index}]")
    return found


def _clock(stamp: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(stamp)) if stamp else "-"


def render(request: QueuedRequest, position: int | None) -> str:
    body = request.response.body if request.response is not None else None
    previews = "".join(
        f"<figure>{_TAGS[kind].format(url=escape(url, quote=True), label=escape(where))}"
        f"<figcaption>{escape(where)}</figcaption></figure>"
        for kind, url, where in _files(body, "output")[:24]
    )
    logs = "\n".join(
        f"{e.get('timestamp', '')} {e.get('level', '')} {e.get('message', '')}" for e in request.logs
    )
    facts = [
        ("App", request.app_id),
        ("Status", request.state + (" (error)" if request.error or request.error_type else "")),
        ("Queue position", position),
        ("Error", request.error),
        (
            "Submitted / started / completed (UTC)",
            " / ".join(map(_clock, (request.submitted_at, request.started_at, request.completed_at))),
        ),
    ]
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>"
        for name, value in facts
        if value is not None
    )
    refresh = '<meta http-equiv="refresh" content="2">' if request.state in (IN_QUEUE, IN_PROGRESS) else ""
    output = json.dumps(body, indent=2, default=str)[:20_000] if body is not None else "(no output yet)"
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{refresh}'
        f"<title>fal emulator · {escape(request.request_id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Request {escape(request.request_id)}</h1><table>{rows}</table>"
        f'<h2>Logs</h2><pre id="logs">{escape(logs) or "(none)"}</pre>'
        f'<h2>Input</h2><pre id="input">{escape(json.dumps(request.arguments, indent=2, default=str))}</pre>'
        f'<h2>Output</h2><div id="previews">{previews}</div><pre id="output">{escape(output)}</pre>'
        "</body></html>"
    )


def page_routes(state: EmulatorState) -> list[Route]:
    async def request_page(request: Request) -> Response:
        record = state.engine.requests.get(request.path_params["request_id"])
        if record is None:
            return HTMLResponse("<h1>Request not found</h1>", status_code=404)
        position = state.engine.position(record) if record.state == IN_QUEUE else None
        return HTMLResponse(render(record, position), headers={"Cache-Control": "no-store"})

    return [Route(PAGE_PATH, request_page, methods=["GET"])]
