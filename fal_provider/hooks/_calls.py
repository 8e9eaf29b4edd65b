"""Pure descriptions of every fal HTTP call, and the parsing of fal's answers.

Nothing here does I/O: the sync and async hook methods build the same :class:`Call`, send it with
their own client, and parse the answer with the same function. That keeps the two halves of the
hook from drifting apart: URLs, headers and validation are decided once, before any I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache, partial
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import httpx

from fal_provider import __version__
from fal_provider.exceptions import (
    FalInputError,
    FalMissingCredentialsError,
    FalServerError,
    error_from_response,
)
from fal_provider.hooks._transport import (
    DEFAULT_RETRY_LIMIT,
    DEFAULT_RETRY_MAX_WAIT,
    DEFAULT_RETRY_MIN_WAIT,
    IDEMPOTENT,
    SUBMIT,
    Call,
    Origin,
    default_timeout,
    keep_response,
    origin_of,
    parsed_url,
    show_origin,
)
from fal_provider.models import (
    AppId,
    CompletedStatus,
    FalRequestRef,
    InProgressStatus,
    QueuedStatus,
    RequestOptions,
    check_headers,
    check_key,
    check_path,
    check_request_id,
    parse_status,
)

# ---------------------------------------------------------------------------
# Settings: a fal connection resolved into plain, immutable values
# Resolve a fal connection (plus environment fallbacks) into plain, immutable settings.
#
# The hook reads the connection once and keeps a :class:`FalSettings`; every URL, header and retry
# limit comes from it. Resolution is a pure function of the connection fields and the environment,
# so it is unit-testable without Airflow and is shared by the sync and the async (trigger) paths.
# ---------------------------------------------------------------------------

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_RUN_URL = "https://fal.run"
DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_CDN_URL = "https://v3.fal.media"
DEFAULT_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
DEFAULT_PLATFORM_URL = "https://api.fal.ai/v1"
#: Seconds prices and model metadata from the Platform API are reused within a process.
DEFAULT_PLATFORM_CACHE_TTL = 3600.0
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class FalSettings:
    """Everything the hook needs to call fal. The key is excluded from ``repr`` and equality output."""

    key: str = field(repr=False)
    queue_url: str = DEFAULT_QUEUE_URL
    run_url: str = DEFAULT_RUN_URL
    rest_url: str = DEFAULT_REST_URL
    cdn_url: str = DEFAULT_CDN_URL
    jwks_url: str = DEFAULT_JWKS_URL
    webhook_base_url: str | None = None
    #: fal's Platform API (prices, model metadata, billing events, request history); ``None`` when
    #: the connection points the queue at another host and names no ``platform_url`` (see
    #: :func:`platform_url_for`).
    platform_url: str | None = DEFAULT_PLATFORM_URL
    #: An ADMIN-scoped key for billing events; sent only to ``platform_url``.
    admin_key: str | None = field(default=None, repr=False)
    platform_cache_ttl: float = DEFAULT_PLATFORM_CACHE_TTL
    #: Page a person opens for a request (the extra link), ``{request_id}``/``{app_id}`` filled in;
    #: for a server other than fal that serves one (the emulator does). Never gets the key.
    request_page_url: str | None = None
    #: May carry secrets of the user's own (e.g. a proxy token), so it stays out of ``repr`` too.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    retry_limit: int = DEFAULT_RETRY_LIMIT
    retry_min_wait: float = DEFAULT_RETRY_MIN_WAIT
    retry_max_wait: float = DEFAULT_RETRY_MAX_WAIT
    timeout: float = DEFAULT_TIMEOUT
    conn_id: str = "fal_default"
    #: Where ``cache=True`` stores results (``fal_provider.cache``); ``None``: ``[fal] cache_path``.
    cache_path: str | None = None

    def __post_init__(self) -> None:
        """A key or header that cannot be sent as given fails here, before any call (see ``_headers``)."""
        check_key(self.key, self.conn_id)
        if self.admin_key is not None:
            check_key(self.admin_key, self.conn_id)
        check_headers(self.headers, f"Connection {self.conn_id!r}, extra 'headers'")
        for name in ("queue_url", "run_url", "rest_url", "cdn_url", "platform_url"):
            value = getattr(self, name)
            if (value is not None or name != "platform_url") and origin_of(value) is None:
                raise FalInputError(
                    f"Connection {self.conn_id!r}: {name} must be an absolute http(s) URL, "
                    f"got {getattr(self, name)!r}"
                )

    @cached_property
    def key_origins(self) -> frozenset[Origin]:
        """The only origins the key is sent to: the configured queue, run, REST, CDN and Platform
        API hosts. Computed once: every keyed call checks it."""
        urls = (self.queue_url, self.run_url, self.rest_url, self.cdn_url, self.platform_url)
        origins = (origin_of(url) for url in urls if url)
        return frozenset(origin for origin in origins if origin is not None)

    @property
    def platform_origin(self) -> Origin | None:
        """The one origin the admin key is sent to."""
        return origin_of(self.platform_url) if self.platform_url else None

    @property
    def queue_origin(self) -> Origin | None:
        return origin_of(self.queue_url)

    def __str__(self) -> str:
        return repr(self)


def normalize_url(value: str | None, default: str) -> str:
    """A base URL without trailing slash; a bare host gets ``https://`` like fal's own hosts."""
    text = (value or "").strip()
    if not text:
        return default
    if "://" not in text:
        text = f"https://{text}"
    return text.rstrip("/")


def platform_url_for(value: str | None, queue_url: str) -> str | None:
    """The Platform API base: the extra, else fal's ``https://api.fal.ai/v1`` when the queue is fal's.

    A connection whose queue is another host (an emulator, a proxy) and that names no
    ``platform_url`` has no Platform API: sending its key to api.fal.ai is then not what the user
    configured, and offline set-ups would wait on an unreachable host before each cost lookup.
    """
    if value and str(value).strip():
        return normalize_url(str(value), DEFAULT_PLATFORM_URL)
    return DEFAULT_PLATFORM_URL if queue_url == DEFAULT_QUEUE_URL else None


def key_from_env(env: Mapping[str, str]) -> str | None:
    """fal_client's order: ``FAL_KEY``, else ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``."""
    key = (env.get("FAL_KEY") or "").strip()
    if key:
        return key
    key_id, secret = (env.get("FAL_KEY_ID") or "").strip(), (env.get("FAL_KEY_SECRET") or "").strip()
    if key_id and secret:
        return f"{key_id}:{secret}"
    return None


def parse_headers(raw: Any, conn_id: str) -> dict[str, str]:
    """Extras may hold headers as a JSON object or as a JSON string (the form's text box)."""
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise FalInputError(
                f"Connection {conn_id!r}: extra 'headers' must be a JSON object, got unparsable text"
            ) from None
    if not isinstance(raw, Mapping):
        raise FalInputError(
            f"Connection {conn_id!r}: extra 'headers' must be a JSON object, got {type(raw).__name__}"
        )
    return {str(k): str(v) for k, v in raw.items()}


def _number(value: Any, name: str, conn_id: str, *, integer: bool = False, minimum: float = 0.0) -> Any:
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise FalInputError(f"Connection {conn_id!r}: {name} must be a number, got {value!r}") from None
    if number < minimum:
        raise FalInputError(f"Connection {conn_id!r}: {name} must be >= {minimum}, got {value!r}")
    return number


def resolve_settings(
    *,
    conn_id: str,
    password: str | None,
    host: str | None,
    extras: Mapping[str, Any],
    overrides: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    conn_found: bool = True,
) -> FalSettings:
    """Combine connection fields, extras, hook arguments (``overrides``, non-``None`` win) and env.

    Raises :class:`FalMissingCredentialsError` naming the connection and the ``FAL_KEY`` fallback when
    no key is found anywhere.
    """
    key = _api_key(password, os.environ if env is None else env, conn_id, conn_found)
    merged: dict[str, Any] = {k: v for k, v in extras.items() if v not in (None, "")}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    headers = parse_headers(extras.get("headers"), conn_id)
    headers.update(parse_headers(overrides.get("headers"), conn_id))
    min_wait = _number(merged.get("retry_min_wait", DEFAULT_RETRY_MIN_WAIT), "retry_min_wait", conn_id)
    max_wait = _number(merged.get("retry_max_wait", DEFAULT_RETRY_MAX_WAIT), "retry_max_wait", conn_id)
    queue_url = normalize_url(host, DEFAULT_QUEUE_URL)
    return FalSettings(
        key=key,
        queue_url=queue_url,
        run_url=normalize_url(merged.get("run_url"), DEFAULT_RUN_URL),
        rest_url=normalize_url(merged.get("rest_url"), DEFAULT_REST_URL),
        cdn_url=normalize_url(merged.get("cdn_url"), DEFAULT_CDN_URL),
        jwks_url=normalize_url(merged.get("jwks_url"), DEFAULT_JWKS_URL),
        webhook_base_url=normalize_url(merged.get("webhook_base_url"), "") or None,
        platform_url=platform_url_for(merged.get("platform_url"), queue_url),
        admin_key=_text(merged, "admin_api_key"),
        platform_cache_ttl=_number(
            merged.get("platform_cache_ttl", DEFAULT_PLATFORM_CACHE_TTL), "platform_cache_ttl", conn_id
        ),
        request_page_url=_text(merged, "request_page_url"),
        headers=headers,
        retry_limit=_number(
            merged.get("retry_limit", DEFAULT_RETRY_LIMIT), "retry_limit", conn_id, integer=True, minimum=1
        ),
        retry_min_wait=min_wait,
        retry_max_wait=max(max_wait, min_wait),
        timeout=_number(merged.get("timeout", DEFAULT_TIMEOUT), "timeout", conn_id, minimum=0.001),
        conn_id=conn_id,
        cache_path=_text(merged, "cache_path"),
    )


def _api_key(password: str | None, environ: Mapping[str, str], conn_id: str, conn_found: bool) -> str:
    """The connection's password, else ``FAL_KEY`` / ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``; raises
    :class:`FalMissingCredentialsError` saying where it looked."""
    key = (password or "").strip() or key_from_env(environ)
    if key:
        return key
    where = (
        f"connection {conn_id!r} has no password (API Key)"
        if conn_found
        # Outside a task (a script, a notebook), Airflow 3 hooks see only connections from
        # environment variables and secrets backends, not those stored in the metadata database.
        else f"connection {conn_id!r} is not defined here (outside a task Airflow 3 only reads "
        f"connections from AIRFLOW_CONN_{conn_id.upper()} and secrets backends)"
    )
    raise FalMissingCredentialsError(
        f"No fal API key: {where}, and neither FAL_KEY nor FAL_KEY_ID + FAL_KEY_SECRET is set in "
        "the environment."
    )


def _text(merged: Mapping[str, Any], name: str) -> str | None:
    """An optional text setting, stripped; blank is unset."""
    return str(merged.get(name) or "").strip() or None


# ---------------------------------------------------------------------------
# Connection lookups shared between the hooks on an event loop
# Share one connection lookup_connection between the hooks on an event loop, for a few seconds.
#
# A triggerer builds one hook per trigger, and each hook used to resolve its Airflow connection on its
# first call (``BaseHook.aget_connection``: secrets backends, then the API server, plus parsing the
# extras). With ~1,000 triggers that is ~1,000 identical lookups at once, and an async task that
# gathers many calls on one hook did the same lookup_connection once per call, because they all started before
# the first one finished. Profiling 1,000 triggers put these lookups second only to the HTTP pool.
#
# So lookups are cached per event loop and connection id for :data:`CONN_TTL` seconds, and concurrent
# lookups of the same id wait for the one already running. The CONN_TTL stays short so a rotated key or
# an edited connection is picked up quickly. Entries hold the key in memory only; nothing here logs.
# ---------------------------------------------------------------------------

#: Seconds a looked-up connection is reused by other hooks on the same loop.
CONN_TTL = 30.0


@dataclass(frozen=True)
class ConnFields:
    """The connection fields settings are resolved from; ``found=False``: the id is not defined."""

    found: bool
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)


ConnFetch = Callable[[str], Awaitable[ConnFields]]

_ConnEntry = tuple[float, "asyncio.Task[ConnFields]"]
_conn_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _ConnEntry]] = (
    weakref.WeakKeyDictionary()
)


async def lookup_connection(
    conn_id: str, fetch: ConnFetch, *, now: Callable[[], float] = time.monotonic
) -> ConnFields:
    """``fetch(conn_id)`` at most once per loop per :data:`CONN_TTL`; failures are not cached."""
    cache = _conn_caches.setdefault(asyncio.get_running_loop(), {})
    entry = cache.get(conn_id)
    if entry is None or entry[0] <= now() or (entry[1].done() and entry[1].exception() is not None):
        task = asyncio.ensure_future(fetch(conn_id))
        entry = (now() + CONN_TTL, task)
        cache[conn_id] = entry
        task.add_done_callback(lambda done: _forget_failure(cache, conn_id, done))
    # shield: a cancelled waiter (its trigger was killed) must not cancel the lookup_connection others share.
    return await asyncio.shield(entry[1])


def _forget_failure(cache: dict[str, _ConnEntry], conn_id: str, task: asyncio.Task[ConnFields]) -> None:
    entry = cache.get(conn_id)
    if entry is not None and entry[1] is task and (task.cancelled() or task.exception() is not None):
        del cache[conn_id]


def clear_connections() -> None:
    """Forget every cached lookup_connection (after editing a connection in the same process)."""
    _conn_caches.clear()


# ---------------------------------------------------------------------------
# Calls: every request the hook makes, built as a Call value
# ---------------------------------------------------------------------------

USER_AGENT = f"airflow-provider-fal/{__version__}"
#: What status calls and streams return, and what ``options`` may be (both hook halves use these).
Status = QueuedStatus | InProgressStatus | CompletedStatus
Options = RequestOptions | Mapping[str, Any] | None
_JSON_SCALARS = (str, int, float, bool, type(None))
_MSGPACK_SCALARS = (*_JSON_SCALARS, bytes, bytearray, memoryview)
#: Deepest nesting accepted in arguments and realtime messages. Model inputs are a few levels deep;
#: the limit keeps the check (and the encoders) far from Python's recursion limit.
MAX_DEPTH = 100


def _shown_path(path: str) -> str:
    """A key path short enough for an error message (a 100-level path is kilobytes)."""
    return path if len(path) <= 300 else f"{path[:140]}...{path[-140:]}"


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def find_unencodable(
    value: Any, path: str, scalars: tuple[type, ...], _parents: tuple[tuple[int, str], ...] = ()
) -> str | None:
    """Describe the first value a JSON/msgpack encoder would reject, by its path, or ``None``.

    That includes a container that contains itself (circular) and nesting deeper than
    :data:`MAX_DEPTH`, which the encoders would turn into a ``RecursionError`` or a bare
    ``ValueError`` without saying where.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value!r} (not a finite number)"
    if isinstance(value, scalars):
        return None
    if not isinstance(value, (Mapping, list, tuple)):
        return f"{path} is of type {_type_name(value)}"
    for parent_id, parent_path in _parents:
        if parent_id == id(value):
            return f"{_shown_path(path)} is {_shown_path(parent_path)} again (a circular reference)"
    if len(_parents) >= MAX_DEPTH:
        return f"{_shown_path(path)} is nested more than {MAX_DEPTH} levels deep"
    parents = (*_parents, (id(value), path))
    items = value.items() if isinstance(value, Mapping) else enumerate(value)
    for key, item in items:
        if isinstance(value, Mapping) and not isinstance(key, str):
            return f"{path} has a key {key!r} of type {type(key).__name__} (keys must be strings)"
        child = f"{path}[{key!r}]" if isinstance(value, Mapping) else f"{path}[{key}]"
        problem = find_unencodable(item, child, scalars, parents)
        if problem:
            return problem
    return None


def encode_arguments(arguments: Any, app: AppId) -> bytes:
    """JSON body for a model call; a FalInputError naming the bad key comes before any network call."""
    if not isinstance(arguments, Mapping):
        raise FalInputError(
            f"Arguments for fal app {app.full!r} must be a JSON object (a dict), got {type(arguments).__name__}"
        )
    problem = find_unencodable(arguments, "arguments", _JSON_SCALARS)
    if problem:
        raise FalInputError(f"Arguments for fal app {app.full!r} are not JSON-serialisable: {problem}")
    return json.dumps(arguments, allow_nan=False, separators=(",", ":")).encode()


def check_msgpack(message: Any, app: str, *, what: str = "message", where: str = "message") -> None:
    """Refuse, before anything is sent, a realtime message msgpack cannot encode.

    ``what`` names the message in the error (``"input #3"``), ``where`` is the root of the path that
    points at the offending value (``"inputs[3]"``).
    """
    if not isinstance(message, Mapping):
        raise FalInputError(
            f"Realtime {what} for {app} must be a mapping (a dict of the app's input fields), "
            f"got {type(message).__name__}"
        )
    problem = find_unencodable(message, where, _MSGPACK_SCALARS)
    if problem:
        raise FalInputError(
            f"Realtime {what} for {app} cannot be msgpack-encoded: {problem}. "
            "Convert it to str/int/float/bool/bytes/list/dict first."
        )


def media_content(response: httpx.Response) -> tuple[bytes, str | None]:
    """The bytes of a downloaded media file and their content type."""
    return response.content, response.headers.get("content-type")


def media_download(url: str, timeout: float) -> Call:
    """GET a media file a result points at: keyless (``with_key=False``) whatever its host.

    fal's media URLs are public (signed or CDN) URLs; the key is never needed for them, and a URL
    that came from a result is not trusted with it, even when it names a configured fal origin.
    Only the User-Agent is sent: the connection's default headers are meant for fal's API.
    """
    return Call(
        method="GET",
        url=url,
        label="fal media download",
        policy=IDEMPOTENT,
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(timeout, connect=min(30.0, timeout)),
        decode=media_content,
        with_key=False,
    )


def merge_headers(*layers: Mapping[str, str] | None) -> dict[str, str]:
    """Later layers win, compared case-insensitively (HTTP header names are)."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in (layer or {}).items():
            merged[name.lower()] = (name, str(value))
    return dict(merged.values())


def join_url(base: str, *parts: str) -> str:
    tail = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return f"{base.rstrip('/')}/{tail}" if tail else base.rstrip("/")


def build_options(options: Options) -> RequestOptions:
    if options is None or isinstance(options, RequestOptions):
        return RequestOptions.build(options)
    if not isinstance(options, Mapping):
        raise FalInputError(f"options must be RequestOptions or a mapping, got {type(options).__name__}")
    return RequestOptions.build(dict(options))


def _user_headers(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if headers is not None and not isinstance(headers, Mapping):
        raise FalInputError(f"headers must be a mapping of names to values, got {type(headers).__name__}")
    check_headers(headers, "headers")
    return headers


class CallBuilder:
    """Builds the calls for one set of settings.

    ``log`` gets the warning when a request reference's URL is replaced (see :meth:`_target`).
    """

    def __init__(self, settings: FalSettings, log: Any = None) -> None:
        self.settings = settings
        self.log = log if log is not None else logging.getLogger(__name__)

    def headers(self, *layers: Mapping[str, str] | None) -> dict[str, str]:
        """User-Agent, connection/hook defaults, then per-call layers. The transport adds the key."""
        return merge_headers({"User-Agent": USER_AGENT}, self.settings.headers, *layers)

    def _json_headers(self, *layers: Mapping[str, str] | None) -> dict[str, str]:
        return self.headers({"Content-Type": "application/json", "Accept": "application/json"}, *layers)

    def _model_post(
        self,
        base_url: str,
        app: AppId,
        path: str,
        body: bytes,
        *,
        label: str,
        headers: dict[str, str],
        timeout: float | None = None,
        params: Mapping[str, str] | None = None,
        decode: Callable[[httpx.Response], Any] = keep_response,
    ) -> Call:
        """A POST that starts paid work (submit, run, stream): retried only where fal never saw it."""
        return Call(
            method="POST",
            url=join_url(base_url, app.full, check_path(path)),
            label=f"{label} {app.full}",
            policy=SUBMIT,
            headers=headers,
            timeout=default_timeout(self.settings, timeout),
            params=dict(params or {}),
            content=body,
            decode=decode,
        )

    # -- queue -------------------------------------------------------------------------------------
    def submit(
        self,
        app_id: str,
        arguments: Any,
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
    ) -> Call:
        """Decodes to a :class:`FalRequestRef`."""
        app = AppId.parse(app_id)
        check_path(path)
        _user_headers(headers)
        opts = build_options(options)
        body = encode_arguments(arguments, app)
        params = opts.query_params()
        if webhook_url:
            parts = urlsplit(webhook_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise FalInputError(f"webhook_url must be an absolute http(s) URL, got {webhook_url!r}")
            params["fal_webhook"] = webhook_url
        return self._model_post(
            self.settings.queue_url,
            app,
            path,
            body,
            label="submit to",
            headers=self._json_headers(headers, opts.headers()),
            params=params,
            decode=partial(parse_submit, app=app, webhook_url=webhook_url),
        )

    def request_ref(self, app_id: str, request_id: str) -> FalRequestRef:
        """URLs built the way ``fal_client`` builds them from an id (sub-path dropped)."""
        app = AppId.parse(app_id)
        base = join_url(self.settings.queue_url, app.base, "requests", check_request_id(request_id))
        return FalRequestRef(
            app_id=app.full,
            request_id=request_id,
            response_url=base,
            status_url=f"{base}/status",
            cancel_url=f"{base}/cancel",
        )

    def _target(
        self, request: FalRequestRef | Mapping[str, Any] | str, name: str
    ) -> tuple[FalRequestRef, str]:
        """The reference and its ``name`` URL (``status_url``...), made safe to send the key to.

        A reference may come from ``dag_run.conf``, an XCom or a user's dict, so its URLs are not
        trusted: one that is not a plain URL on the connection's queue origin (scheme, host, port;
        no user info, query or fragment) is replaced by the URL built from app id and request id,
        with a warning. A real fal submit returns URLs on the queue origin, so they are kept.
        """
        ref = FalRequestRef.coerce(request)
        given: str | None = getattr(ref, name)
        if given and self._on_queue_origin(given):
            return ref, given
        rebuilt: str = getattr(self.request_ref(ref.app_id, ref.request_id), name)
        if given:
            self.log.warning(
                "fal request %s on %s: its %s is on %s, not on the connection's queue origin %s; "
                "using %s instead (the API key is only sent to the configured fal hosts)",
                ref.request_id,
                ref.app_id,
                name,
                show_origin(origin_of(given)),
                show_origin(self.settings.queue_origin),
                rebuilt,
            )
        return ref, rebuilt

    def _on_queue_origin(self, url: str) -> bool:
        return _plain_origin(url) == self.settings.queue_origin

    def _get(
        self,
        url: str,
        label: str,
        params: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        accept: str = "application/json",
        answers: frozenset[int] = frozenset(),
        decode: Callable[[httpx.Response], Any] | None = None,
    ) -> Call:
        return Call(
            method=method,
            url=url,
            label=label,
            policy=IDEMPOTENT,
            headers=self.headers({"Accept": accept}),
            timeout=default_timeout(self.settings),
            params=dict(params or {}),
            accept=answers,
            decode=decode or partial(json_body, label=label),
        )

    def status(self, request: Any, *, logs: bool = False) -> Call:
        ref, url = self._target(request, "status_url")
        label = f"status of {ref.request_id} on {ref.app_id}"
        params = {"logs": "1" if logs else "0"}
        return self._get(url, label, params, decode=partial(parse_status_response, label=label))

    def status_stream(self, request: Any, *, logs: bool = False) -> Call:
        ref, status_url = self._target(request, "status_url")
        url = join_url(status_url, "stream")
        label = f"status stream of {ref.request_id} on {ref.app_id}"
        return self._get(url, label, {"logs": "1" if logs else "0"}, accept="text/event-stream")

    def result(self, request: Any) -> Call:
        ref, url = self._target(request, "response_url")
        return self._get(url, f"result of {ref.request_id} on {ref.app_id}")

    def cancel(self, request: Any) -> Call:
        """Decodes to the outcome word (see :func:`parse_cancel`)."""
        ref, url = self._target(request, "cancel_url")
        label = f"cancel of {ref.request_id} on {ref.app_id}"
        answers = frozenset({400, 404})
        return self._get(url, label, method="PUT", answers=answers, decode=parse_cancel)

    # -- direct calls ------------------------------------------------------------------------------
    def run(
        self,
        app_id: str,
        arguments: Any,
        *,
        path: str = "",
        options: Options = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Call:
        app = AppId.parse(app_id)
        _user_headers(headers)
        opts = build_options(options)
        return self._model_post(
            self.settings.run_url,
            app,
            path,
            encode_arguments(arguments, app),
            label="run of",
            headers=self._json_headers(headers, opts.headers()),
            timeout=timeout,
            params=opts.query_params(),
            decode=partial(json_body, label=f"run of {app.full}"),
        )

    def stream(
        self,
        app_id: str,
        arguments: Any,
        *,
        path: str = "/stream",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Call:
        app = AppId.parse(app_id)
        _user_headers(headers)
        accept = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
        }
        return self._model_post(
            self.settings.run_url,
            app,
            path,
            encode_arguments(arguments, app),
            label="stream of",
            headers=self.headers(accept, headers),
            timeout=timeout,
        )

    def realtime_token(self, app: AppId, token_expiration: int) -> Call:
        """Decodes to the token string."""
        if (
            isinstance(token_expiration, bool)
            or not isinstance(token_expiration, int)
            or token_expiration <= 0
        ):
            raise FalInputError(
                f"token_expiration must be a positive number of seconds, got {token_expiration!r}"
            )
        body = json.dumps({"allowed_apps": [app.alias], "token_expiration": token_expiration}).encode()
        label = f"realtime token for {app.full}"
        return Call(
            method="POST",
            url=join_url(self.settings.rest_url, "tokens") + "/",
            label=label,
            policy=IDEMPOTENT,
            headers=self._json_headers(),
            timeout=default_timeout(self.settings),
            content=body,
            decode=partial(parse_token, label=label),
        )

    def storage_token(self) -> Call:
        return Call(
            method="POST",
            url=join_url(self.settings.rest_url, "storage/auth/token"),
            label="CDN storage token",
            policy=IDEMPOTENT,
            headers=self._json_headers(),
            timeout=default_timeout(self.settings),
            params={"storage_type": "fal-cdn-v3"},
            content=b"{}",
            decode=partial(json_body, label="CDN storage token"),
        )


@lru_cache(maxsize=16384)
def _plain_origin(url: str) -> Origin | None:
    """``url``'s origin if it is a plain URL (no user info, query or fragment), else ``None``.

    Cached: a waiting request's status URL is checked on every poll."""
    parsed = parsed_url(url)
    if parsed is None:
        return None
    if parsed.userinfo or parsed.query or parsed.fragment:
        return None
    return origin_of(parsed)


# -- answers ---------------------------------------------------------------------------------------
def json_body(response: httpx.Response, label: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise FalServerError(
            f"{label}: fal answered HTTP {response.status_code} with a body that is not JSON "
            f"({response.headers.get('content-type', 'no content type')})",
            http_status=response.status_code,
        ) from None


def parse_submit(response: httpx.Response, app: AppId, webhook_url: str | None) -> FalRequestRef:
    body = json_body(response, f"submit to {app.full}")
    if not isinstance(body, Mapping) or not body.get("request_id"):
        raise FalServerError(f"submit to {app.full}: fal's answer has no request_id: {str(body)[:200]!r}")
    return FalRequestRef.model_validate({**body, "app_id": app.full, "webhook_url": webhook_url})


def parse_status_response(response: httpx.Response, label: str) -> Status:
    try:
        return parse_status(json_body(response, label))
    except ValueError as err:
        raise FalServerError(f"{label}: {err}") from None


def parse_cancel(response: httpx.Response) -> str:
    """fal answers a cancel with 202/400/404 and a ``status`` word; all three are normal outcomes."""
    if response.is_success:
        return "CANCELLATION_REQUESTED"
    try:
        word = response.json().get("status")
    except (ValueError, AttributeError):
        word = None
    expected = {400: "ALREADY_COMPLETED", 404: "NOT_FOUND"}[response.status_code]
    if word == expected or (response.status_code == 404 and word is None):
        return expected
    raise error_from_response(response.status_code, response.headers, response.content, context="cancel")


def parse_token(response: httpx.Response, label: str) -> str:
    data = json_body(response, label)
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping):
        for name in ("token", "detail"):
            if isinstance(data.get(name), str):
                return str(data[name])
    raise FalServerError(f"{label}: unexpected token answer shape ({type(data).__name__})")
