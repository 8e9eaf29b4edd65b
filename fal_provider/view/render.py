"""The task view as one self-contained HTML page (no scripts, no external assets).

Every value that came from a DAG, a model or fal is escaped; a URL becomes a preview or a link
only when it is ``http(s)`` or a ``data:`` URL of an image, video or audio file, so a model output
or an argument cannot inject markup or a ``javascript:`` link into the Airflow UI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlparse

from fal_provider.view.data import LiveStatus, TaskView

MAX_PREVIEWS = 24
MAX_JSON_CHARS = 20_000
REFRESH_SECONDS = 3
_MEDIA_KINDS = ("image", "video", "audio")
_EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".svg"),
    "video": (".mp4", ".webm", ".mov", ".mkv"),
    "audio": (".mp3", ".wav", ".ogg", ".flac", ".m4a", ".aac"),
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1f2933;background:#fff}
h1{font-size:18px;margin:0 0 12px} h2{font-size:15px;margin:20px 0 8px}
table{border-collapse:collapse} td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#52606d;font-weight:600} pre{background:#f5f7fa;padding:8px;overflow:auto;max-height:360px}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;background:#e4e7eb}
.previews{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0} figcaption{font-size:12px;color:#52606d}
img.preview,video.preview{max-width:320px;max-height:320px;border:1px solid #cbd2d9}
.muted{color:#7b8794}
"""


@dataclass(frozen=True)
class Media:
    kind: str
    url: str
    label: str


def safe_media_url(url: Any) -> str | None:
    """``url`` if a browser may load it as media here: http(s), or a media ``data:`` URL."""
    if not isinstance(url, str) or len(url) > 10_000_000:
        return None
    text = url.strip()
    if text.lower().startswith("data:"):
        return text if text[5:].split("/", 1)[0].lower() in _MEDIA_KINDS else None
    parsed = urlparse(text)
    return text if parsed.scheme.lower() in ("http", "https") and parsed.netloc else None


def _kind(url: str, content_type: Any) -> str | None:
    if isinstance(content_type, str) and content_type.split("/", 1)[0].lower() in _MEDIA_KINDS:
        return content_type.split("/", 1)[0].lower()
    if url.lower().startswith("data:"):
        return url[5:].split("/", 1)[0].lower()
    path = urlparse(url).path.lower()
    return next((kind for kind, ends in _EXTENSIONS.items() if path.endswith(ends)), None)


def find_media(value: Any, where: str = "output") -> Iterator[Media]:
    """Media files anywhere in a model output: fal's file objects (``url`` + ``content_type``) or
    bare URLs, labelled with where they were found (``images[0]``)."""
    if isinstance(value, dict):
        url = safe_media_url(value.get("url"))
        kind = _kind(url, value.get("content_type")) if url else None
        if url and kind:
            yield Media(kind, url, where)
        for name, item in value.items():
            if name != "url":
                yield from find_media(item, f"{where}.{name}" if where else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from find_media(item, f"{where}[{index}]")
    elif isinstance(value, str):
        url = safe_media_url(value)
        kind = _kind(url, None) if url else None
        if url and kind:
            yield Media(kind, url, where)


def _media_html(media: Media) -> str:
    url, label = escape(media.url, quote=True), escape(media.label)
    if media.kind == "image":
        tag = f'<img class="preview" src="{url}" alt="{label}" loading="lazy">'
    elif media.kind == "video":
        tag = f'<video class="preview" src="{url}" controls preload="metadata"></video>'
    else:
        tag = f'<audio src="{url}" controls preload="metadata"></audio>'
    return f'<figure data-kind="{media.kind}">{tag}<figcaption>{label}</figcaption></figure>'


def _json(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters)"
    return f"<pre>{escape(text)}</pre>"


def _rows(pairs: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>"
        for name, value in pairs
        if value not in (None, "", {}, [])
    )
    return f"<table>{cells}</table>"


def _link(url: str | None) -> str:
    target = safe_media_url(url) if url and not url.lower().startswith("data:") else None
    if not target:
        return ""
    href = escape(target, quote=True)
    return f'<p><a id="fal-link" href="{href}" target="_blank" rel="noopener noreferrer">Open the request</a></p>'


def _live_html(live: LiveStatus | None) -> str:
    if live is None:
        return ""
    if live.unavailable:
        return f'<h2>fal status</h2><p class="muted" id="live-unavailable">Live status unavailable ({escape(live.unavailable)})</p>'
    head = _rows(
        [
            ("Status", live.status),
            ("Queue position", live.queue_position),
            ("Error", live.error),
            ("Error type", live.error_type),
        ]
        + [(f"Metric {name}", value) for name, value in sorted(live.metrics.items())]
    )
    lines = "\n".join(
        f"{entry.get('timestamp') or ''} {entry.get('level') or ''} {entry.get('message') or ''}".strip()
        for entry in live.logs
    )
    logs = f'<pre id="fal-logs">{escape(lines)}</pre>' if lines else '<p class="muted">No logs from fal.</p>'
    return f'<h2>fal status</h2><div id="live">{head}</div><h2>fal logs</h2>{logs}'


def _outputs_html(view: TaskView) -> str:
    if not view.has_result:
        waiting = "The task has not returned a result yet." if view.active else "No result in XCom."
        return f'<h2>Output</h2><p class="muted">{waiting}</p>'
    media = list(find_media(view.result, ""))[:MAX_PREVIEWS]
    previews = "".join(_media_html(item) for item in media)
    gallery = f'<div class="previews" id="previews">{previews}</div>' if media else ""
    return f"<h2>Output</h2>{gallery}<details><summary>Result JSON</summary>{_json(view.result)}</details>"


def render_page(view: TaskView) -> str:
    key, request = view.key, view.request or {}
    title = f"fal · {key.dag_id} / {key.task_id}"
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if view.active else ""
    status = view.live.status if view.live and view.live.status else None
    summary = _rows(
        [
            ("Task state", view.state),
            ("Try", view.try_number),
            ("fal app", request.get("app_id") or view.inputs.get("app_id")),
            ("Request id", request.get("request_id")),
            ("fal status", status),
            ("Started", view.start_date),
            ("Ended", view.end_date),
            ("Duration", (view.end_date - view.start_date) if view.start_date and view.end_date else None),
        ]
    )
    if not request:
        body = '<p id="no-request">This try has not submitted a fal request (yet).</p>'
    else:
        body = _link(view.link) + _live_html(view.live)
    cost = f'<h2>Cost</h2><div id="cost">{_cost_html(view.cost)}</div>' if view.cost is not None else ""
    inputs = f"<h2>Input</h2>{_json(view.inputs)}" if view.inputs else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{refresh}<title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f'<h1>{escape(title)} <span class="badge" id="state">{escape(str(view.state))}</span></h1>'
        f'<div id="summary">{summary}</div>{body}{cost}{inputs}{_outputs_html(view)}</body></html>'
    )


def _cost_html(cost: Any) -> str:
    if isinstance(cost, dict):
        return _rows([(str(name), value) for name, value in cost.items()])
    return escape(str(cost))


def render_message(title: str, message: str) -> str:
    """A plain page for "not found" and friends, in the same look."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><p>{escape(message)}</p></body></html>"
    )
