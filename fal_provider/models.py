"""Typed shapes of what fal sends and what the provider passes between tasks.

fal adds fields over time, so every wire model ignores unknown keys instead of failing; the
provider's own shapes (request reference, options) forbid them, so a typo in a DAG is an error
at parse time rather than a silently ignored option.

The module is the provider's shared vocabulary, in four sections: what may go into an HTTP header
(checked before any request is built), the ids, statuses, request reference and options, the
parameter checks every task runs on its inputs before anything is paid for, and fal's request-tag
rules with the money parameters (``max_cost``, budget names). None of it sends a request or needs
Airflow.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from fal_provider.exceptions import FalError, FalInputError

# ---------------------------------------------------------------------------
# Headers: what may go into an HTTP header
# What may go into an HTTP header: checked before a request is built, never echoing a value.
#
# A header value with CR/LF would split the request (and h11 then fails with the value in its error
# text, which is retried as a connection error and logged); a non-ASCII one cannot be encoded. Both
# fail the same way on every try, so they are :class:`~fal_provider.exceptions.FalInputError`\ s,
# raised when the hook or call is built. Values may be secrets (the key, a proxy token): messages
# name the header and the problem, never the value.
# ---------------------------------------------------------------------------

#: RFC 9110 ``token``: the characters a header name may have.
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NAME_CHARS = "letters, digits and !#$%&'*+-.^_`|~"


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or ``None`` (tab and visible ASCII are fine)."""
    for char in value:
        if char in "\r\n":
            return "a line break (CR/LF)"
        if char != "\t" and (ord(char) < 0x20 or ord(char) == 0x7F):
            return "a control character"
        if not char.isascii():
            return "a non-ASCII character"
    return None


def check_header_value(name: str, value: Any, where: str) -> None:
    problem = value_problem(str(value))
    if problem:
        raise FalInputError(
            f"{where}: the value of header {name!r} contains {problem}; HTTP header values must be "
            "printable ASCII on one line. Fix the value (it is not shown here in case it is a secret)."
        )


def check_header_name(name: Any, where: str) -> None:
    text = str(name)
    if _NAME.fullmatch(text):
        return
    valid = _NAME.match(text)
    prefix = valid.group(0) if valid else ""
    which = f"a header name starting {prefix!r}" if prefix else "a header name"
    raise FalInputError(
        f"{where}: {which} is not a valid HTTP "
        f"header name (only {_NAME_CHARS}; no spaces, ':' or line breaks). Give names and values as "
        "separate keys and values of the mapping."
    )


def check_headers(headers: Mapping[Any, Any] | None, where: str) -> None:
    """Raise :class:`FalInputError` for the first header that cannot be sent as given."""
    for name, value in (headers or {}).items():
        check_header_name(name, where)
        check_header_value(str(name), value, where)


def check_key(key: str, conn_id: str) -> None:
    """The key goes into ``Authorization: Key <key>``: it must be a valid header value too."""
    problem = value_problem(key)
    if problem:
        raise FalInputError(
            f"The fal API key for connection {conn_id!r} contains {problem}. Enter it again as "
            "'key_id:key_secret' on one line (connection password, or FAL_KEY / FAL_KEY_ID + "
            "FAL_KEY_SECRET); the key itself is not shown here."
        )


# ---------------------------------------------------------------------------
# Ids, statuses, the request reference, options
# ---------------------------------------------------------------------------

_NAMESPACES = ("workflows", "comfy")
#: The id alphabet: one segment of an app id, of a ``path`` or a request id is 1-128 letters, digits,
#: '-', '_' or '.', and never '.' or '..' alone. fal's ids (``fal-ai/flux/schnell``,
#: ``fal-ai/florence-2-large/more-detailed-caption``, ``110602490-lora``, UUID request ids) fit it;
#: everything a URL gives meaning to ('/', '?', '#', '%', whitespace, control characters) does not.
MAX_SEGMENT = 128
_SEGMENT = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_SEGMENT}}}")
_ALPHABET = "letters, digits, '-', '_' and '.'"


def _shown(value: str) -> str:
    """The bad value for an error message: escaped (control characters visible), and short."""
    return repr(value if len(value) <= 120 else value[:120] + "...")


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "an empty segment ('//', or a leading or trailing '/')"
    if segment in (".", ".."):
        return f"a {segment!r} segment (ids are path segments and cannot walk up the URL)"
    if _SEGMENT.fullmatch(segment):
        return None
    bad = next((c for c in segment if not (c.isascii() and (c.isalnum() or c in "-_."))), None)
    if bad is None:
        return f"a segment longer than {MAX_SEGMENT} characters"
    if bad in "?#%":
        return f"{bad!r} (ids are URL path segments: a query, fragment or escape cannot be part of one)"
    if bad.isspace() or not bad.isprintable():
        return "whitespace or a control character"
    return f"the character {bad!r} (only {_ALPHABET} are allowed)"


def split_segments(value: str, what: str, hint: str = "") -> list[str]:
    """``value`` split at '/' (one leading and one trailing '/' ignored), every segment checked.

    Raises :class:`FalInputError` naming ``what`` and the problem, before anything is sent.
    """
    if not isinstance(value, str):
        raise FalInputError(f"{what} must be a string, got {type(value).__name__}{hint}")
    text = value[1:] if value.startswith("/") else value
    text = text[:-1] if text.endswith("/") else text
    segments = text.split("/") if text else []
    for segment in segments:
        problem = _segment_problem(segment)
        if problem:
            raise FalInputError(f"Invalid {what} {_shown(value)}: it contains {problem}{hint}")
    return segments


def check_request_id(value: Any) -> str:
    """A request id is one segment of the id alphabet (fal's are UUIDs)."""
    if not isinstance(value, str) or not value:
        raise FalInputError(f"request_id must be a non-empty string, got {value!r}")
    problem = "'/' (a request id is one segment)" if "/" in value else _segment_problem(value)
    if problem:
        raise FalInputError(
            f"Invalid request_id {_shown(value)}: it contains {problem}; a request id is {_ALPHABET}"
        )
    return value


def check_path(path: str, what: str = "path") -> str:
    """An endpoint sub-path (``/stream``, ``more-detailed-caption``) as ``a/b`` without outer slashes."""
    return "/".join(split_segments(path or "", what, f"; a path is '/'-separated segments of {_ALPHABET}"))


class RequestState(str, Enum):
    """fal's queue states. Failure is not a state: it is ``COMPLETED`` with an ``error``."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


def loads_if_json(value: Any) -> Any:
    """A string that parses as JSON becomes what it encodes (templates render to strings unless the
    DAG renders native objects); anything else, or a string that is not JSON, is returned as is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def canonical_json(value: Any) -> str:
    """``value`` as one JSON text per meaning: sorted keys, no whitespace, no NaN.

    The request digest below and the result cache's key (:func:`fal_provider.cache.cache_key`) are
    both hashes of it, so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` are one input to both.
    Raises :class:`FalInputError` for what JSON cannot carry (a fal body is JSON, so such an
    argument could never have been sent either).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise FalInputError(f"fal arguments must be JSON values to be cached: {err}") from None


def input_digest(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body: what a submit's intent record stores, and
    how an orphaned request (a POST whose answer was lost) is matched to it."""
    return hashlib.sha256(canonical_json(dict(arguments)).encode()).hexdigest()


@dataclass(frozen=True)
class AppId:
    """An endpoint id split the way fal's clients split it.

    Submit and run URLs use the whole id (``fal-ai/flux/dev``); status, result and cancel URLs use
    only ``[namespace/]owner/app`` (``fal-ai/flux``), so both forms are kept. Every segment is
    checked against the id alphabet (see :data:`MAX_SEGMENT`), because the id becomes URL path
    segments: ``../../rest/tokens`` or ``a/b?fal_webhook=...`` would otherwise reach another endpoint.
    """

    owner: str
    alias: str
    path: str = ""
    namespace: str = ""

    @classmethod
    def parse(cls, app_id: str) -> AppId:
        """Raise :class:`FalInputError` for anything but ``[namespace/]owner/app[/path...]`` in the id
        alphabet (see :data:`MAX_SEGMENT`), or a legacy ``<digits>-<alias>`` id."""
        form = " Expected 'owner/app[/path]' like 'fal-ai/flux/dev'."
        if not isinstance(app_id, str) or app_id.strip("/") == "":
            raise FalInputError(
                f"fal app id must be a non-empty 'owner/app[/path]' string like 'fal-ai/flux/dev', got {app_id!r}"
            )
        parts = split_segments(app_id, "fal app id", "." + form)
        if len(parts) == 1:
            legacy = parts[0].split("-", 1)
            if len(legacy) == 2 and legacy[0].isdigit() and legacy[1]:
                return cls(owner=legacy[0], alias=legacy[1])
            raise FalInputError(
                f"Invalid fal app id {app_id!r}: expected 'owner/app[/path]' (e.g. 'fal-ai/flux/dev'), "
                "or 'workflows/owner/app' / 'comfy/owner/app'."
            )
        namespace = ""
        if parts[0] in _NAMESPACES:
            namespace, parts = parts[0], parts[1:]
            if len(parts) < 2:
                raise FalInputError(
                    f"Invalid fal app id {app_id!r}: expected '{namespace}/owner/app[/path]'."
                )
        return cls(owner=parts[0], alias=parts[1], path="/".join(parts[2:]), namespace=namespace)

    @property
    def base(self) -> str:
        """``[namespace/]owner/app``: the prefix of ``/requests/`` URLs."""
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.owner}/{self.alias}"

    @property
    def full(self) -> str:
        """The whole id, as used for submit and run."""
        return f"{self.base}/{self.path}" if self.path else self.base

    def __str__(self) -> str:
        return self.full


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class LogEntry(_Wire):
    message: str = ""
    level: str | None = None
    source: str | None = None
    timestamp: str | None = None


class _StatusBase(_Wire):
    request_id: str | None = None
    response_url: str | None = None
    status_url: str | None = None
    cancel_url: str | None = None
    logs: list[LogEntry] | None = None


class QueuedStatus(_StatusBase):
    status: Literal["IN_QUEUE"]
    queue_position: int | None = None


class InProgressStatus(_StatusBase):
    status: Literal["IN_PROGRESS"]


class CompletedStatus(_StatusBase):
    status: Literal["COMPLETED"]
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.error_type is not None


FalStatus = Annotated[QueuedStatus | InProgressStatus | CompletedStatus, Field(discriminator="status")]
_STATUS_ADAPTER: TypeAdapter[QueuedStatus | InProgressStatus | CompletedStatus] = TypeAdapter(FalStatus)


def parse_status(data: Any) -> QueuedStatus | InProgressStatus | CompletedStatus:
    """Parse a status body; an unknown ``status`` value is an error, as in fal's own client."""
    try:
        return _STATUS_ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ValueError(
            f"Unexpected fal status body {str(data)[:200]!r}: {err.errors()[0]['msg']}"
        ) from None


class FalRequestRef(BaseModel):
    """Everything needed to find a queued request again: small, JSON, safe to put in XCom.

    It carries no credentials. Its URLs are hints, not trusted: the hook uses one only if it is a
    plain URL on the connection's queue origin, and otherwise rebuilds it from app id and request
    id, so a reference from ``dag_run.conf`` or an XCom cannot send the key elsewhere.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    app_id: str
    request_id: str
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    gateway_request_id: str | None = None
    queue_position: int | None = None
    webhook_url: str | None = None

    @field_validator("app_id")
    @classmethod
    def _valid_app_id(cls, value: str) -> str:
        AppId.parse(value)
        return value

    @field_validator("request_id")
    @classmethod
    def _valid_request_id(cls, value: str) -> str:
        return check_request_id(value)

    @classmethod
    def coerce(cls, value: Any) -> FalRequestRef:
        """Accept what upstream tasks produce: a ref, its dict (XCom), or its JSON string."""
        if isinstance(value, FalRequestRef):
            return value
        value = loads_if_json(value)
        if not isinstance(value, dict):
            raise FalInputError(
                "A fal request reference must be a dict with 'app_id' and 'request_id' (the XCom value of "
                f"FalSubmitOperator), got {type(value).__name__}: {str(value)[:120]!r}"
            )
        try:
            return cls.model_validate(value)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors()
            )
            raise FalInputError(
                f"Invalid fal request reference {str(value)[:200]!r}: {problems}. Expected the XCom value of "
                "FalSubmitOperator, or {'app_id': 'owner/app', 'request_id': '...'}."
            ) from None

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


_LIFECYCLE_WORDS = {"never": -1, "immediate": 60, "1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
_LIFECYCLE_WORDS["1y"] = 365 * 86400


class RequestOptions(BaseModel):
    """fal's platform headers as typed, validated options.

    Validation happens when the options are built, so a wrong value fails the task before any paid
    request is sent. ``None`` means "leave fal's default".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Literal["normal", "low"] | None = None
    runner_hint: str | None = None
    start_timeout: float | None = Field(default=None, gt=0.1, description="Seconds fal may take to start it.")
    no_retry: bool | None = None
    store_io: bool | None = None
    object_lifecycle: int | str | None = Field(
        default=None, description="Seconds to keep generated files, or never/immediate/1h/1d/7d/30d/1y."
    )
    disable_fallback: bool | None = None
    max_queue_length: int | None = Field(default=None, ge=0)

    @field_validator("runner_hint")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        if value is not None:
            check_header_value("X-Fal-Runner-Hint", value, "runner_hint")
        return value

    @field_validator("start_timeout")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("start_timeout must be a finite number of seconds")
        return value

    @field_validator("object_lifecycle")
    @classmethod
    def _lifecycle(cls, value: int | str | None) -> int | str | None:
        if value is None:
            return None
        if isinstance(value, str) and value not in _LIFECYCLE_WORDS:
            raise ValueError(
                f"object_lifecycle must be seconds or one of {sorted(_LIFECYCLE_WORDS)}, got {value!r}"
            )
        if isinstance(value, int) and value < 0:
            raise ValueError("object_lifecycle seconds must be >= 0")
        return value

    @classmethod
    def build(
        cls, options: RequestOptions | dict[str, Any] | None = None, **overrides: Any
    ) -> RequestOptions:
        """Merge a dict/instance with keyword overrides (``None`` overrides are ignored); raise ValueError."""
        base = options.model_dump() if isinstance(options, RequestOptions) else dict(options or {})
        base.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(base)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in err.errors()
            )
            raise FalInputError(f"Invalid fal request options: {problems}") from None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.priority:
            out["X-Fal-Queue-Priority"] = self.priority
        if self.runner_hint:
            out["X-Fal-Runner-Hint"] = self.runner_hint
        if self.start_timeout is not None:
            # Both names: the newer one wins at fal, the older one is what fal's own client still sends.
            out["X-Fal-Request-Start-Timeout"] = str(float(self.start_timeout))
            out["X-Fal-Request-Timeout"] = str(float(self.start_timeout))
        if self.no_retry is not None:
            out["X-Fal-No-Retry"] = "1" if self.no_retry else "0"
        if self.store_io is not None:
            out["X-Fal-Store-IO"] = "1" if self.store_io else "0"
        if self.object_lifecycle is not None:
            seconds = (
                _LIFECYCLE_WORDS[self.object_lifecycle]
                if isinstance(self.object_lifecycle, str)
                else self.object_lifecycle
            )
            out["X-Fal-Object-Lifecycle-Preference"] = json.dumps({"expiration_duration_seconds": seconds})
        if self.disable_fallback is not None:
            out["x-app-fal-disable-fallback"] = "true" if self.disable_fallback else "false"
        return out

    def query_params(self) -> dict[str, str]:
        return {} if self.max_queue_length is None else {"fal_max_queue_length": str(self.max_queue_length)}


class WebhookPayload(_Wire):
    """The body fal POSTs to ``fal_webhook``. ``status`` is ``OK``/``ERROR``, not a queue state."""

    request_id: str
    gateway_request_id: str | None = None
    status: Literal["OK", "ERROR"]
    payload: Any = None
    error: str | None = None
    payload_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "OK" and self.payload_error is None


# ---------------------------------------------------------------------------
# Task inputs: parameter checks shared by every task
# User input checked before anything is paid for, shared by the operators, the sensor and the wait policy.
#
# Every task checks its parameters twice: in ``__init__`` (DAG parse time) for each value that is
# already known, and again in ``execute()`` after rendering, before the first call that could start
# paid work. A value that is only known after rendering (a Jinja string, an ``XComArg``) is skipped
# at parse time (:func:`is_templated`). Every failure is a
# :class:`~fal_provider.exceptions.FalInputError`: a ``ValueError`` for Python callers and a
# permanent error for Airflow, because the same input fails the same way on every try and a retry
# would only spend money.
#
# Messages say what was wrong and how to fix it; they never echo a header value (it may be a
# credential).
# ---------------------------------------------------------------------------

#: Appended to "must render to ..." errors: the usual cause is a Jinja template rendered as text.
TEMPLATE_HINT = (
    " A Jinja template renders to a string: set render_template_as_native_obj=True on the DAG, "
    "or pass an XComArg / a literal instead."
)


def is_templated(value: Any) -> bool:
    """True when a value is only known after rendering (a Jinja string or an XComArg)."""
    from airflow.sdk.definitions._internal.mixins import ResolveMixin

    if isinstance(value, ResolveMixin):
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_templated(v) for v in value)
    return False


@contextmanager
def input_errors() -> Iterator[None]:
    """Turn a local ``ValueError``/``TypeError`` into a :class:`FalInputError` with the same message.

    For checks shared with code that raises plain ``ValueError`` (models, trigger policy): an
    operator must fail them without spending retries, including when ``__init__`` runs at run time
    for a mapped task. Errors that already know their retry verdict (``FalError``) pass unchanged.
    """
    try:
        yield
    except FalError:
        raise
    except (ValueError, TypeError) as err:
        raise FalInputError(str(err)) from err


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    positive: bool = False,
    allow_none: bool = False,
) -> Any:
    """A real number (never a bool: ``True`` is not ``1`` second), optionally bounded; returns it."""
    if value is None and allow_none:
        return None
    kinds = int if integer else int | float
    wanted = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise FalInputError(
            f"{name} must be {wanted}{' or None' if allow_none else ''}, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise FalInputError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise FalInputError(f"{name} must be a positive {wanted.split()[-1]}, got {value!r}")
    if minimum is not None and value < minimum:
        raise FalInputError(f"{name} must be {wanted} >= {minimum:g}, got {value!r}")
    return value


def check_seconds(value: Any, name: str, *, allow_none: bool = True) -> float | None:
    """A positive duration in seconds or a ``timedelta``; returned as float seconds."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    result = check_number(value, name, positive=True, allow_none=allow_none)
    return None if result is None else float(result)


def check_task_headers(headers: Any) -> None:
    """Extra HTTP headers: a mapping of valid names to single-line text values.

    Values are never shown in the error: a header is where people put tokens.
    """
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        hint = TEMPLATE_HINT if isinstance(headers, str) else ""
        raise FalInputError(
            f"headers must be a dict of header names to values, got {type(headers).__name__}.{hint}"
        )
    for name, value in headers.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FalInputError(
                f"headers: the value of {name!r} must be a string, got {type(value).__name__}"
            )
    check_headers(headers, "headers")


def coerce_request(request: Any) -> FalRequestRef:
    """A request reference (``FalRequestRef``, its XCom dict or JSON) given by the user."""
    try:
        return FalRequestRef.coerce(request)
    except ValueError as err:
        raise FalInputError(str(err)) from None


# -- request tags and money parameters ---------------------------------------------------------
# Request tags (``X-Fal-Tags: key=value,key=value``) let fal's own usage reports split spend by DAG
# and task. fal's gateway never fails a request for a bad tag, it silently drops the tag, so the
# rules are checked here, before anything is sent (:func:`check_tags`).

TAGS_HEADER = "X-Fal-Tags"

#: fal's tag rules (request-tags docs; the same limits fal's own clients enforce).
MAX_TAG_PAIRS = 10
MAX_TAG_KEY_LENGTH = 64
MAX_TAG_VALUE_LENGTH = 256
MAX_TAGS_BYTES = 1024
RESERVED_TAG_PREFIX = "fal."
#: Set by the provider on every request; a user tag may not replace them.
DAG_TAG = "airflow.dag"
TASK_TAG = "airflow.task"
_TAG_KEY = re.compile(r"[a-z0-9._-]+")
_BUDGET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_tags(tags: Any, *, where: str = "tags") -> dict[str, str]:
    """User tags checked by fal's rules; keys lowercased and values stripped, as fal stores them.

    The provider's own ``airflow.dag`` / ``airflow.task`` count towards the 10 pairs and 1 KB, and
    cannot be set by the user (they are what fal's reports split by).
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise FalInputError(f"{where} must be a dict of tag names to values, got {type(tags).__name__}")
    checked: dict[str, str] = {}
    for raw_key, raw_value in tags.items():
        if (
            not isinstance(raw_key, str)
            or not isinstance(raw_value, str | int | float)
            or isinstance(raw_value, bool)
        ):
            raise FalInputError(
                f"{where}: tag keys and values must be strings, got {raw_key!r}: {raw_value!r}"
            )
        key, value = raw_key.strip().lower(), str(raw_value).strip()
        _check_tag(key, value, where)
        if key in (DAG_TAG, TASK_TAG):
            raise FalInputError(f"{where}: {key!r} is set by the provider on every request; use another key")
        checked[key] = value
    if len(checked) > MAX_TAG_PAIRS - 2:
        raise FalInputError(
            f"{where}: at most {MAX_TAG_PAIRS - 2} tags (fal takes {MAX_TAG_PAIRS} pairs and the provider "
            f"sets {DAG_TAG} and {TASK_TAG}), got {len(checked)}"
        )
    return checked


def _check_tag(key: str, value: str, where: str) -> None:
    if not _TAG_KEY.fullmatch(key):
        raise FalInputError(f"{where}: tag key {key!r} must be non-empty and only a-z, 0-9, '.', '_' or '-'")
    if len(key) > MAX_TAG_KEY_LENGTH:
        raise FalInputError(f"{where}: tag key {key[:20]!r}... is over {MAX_TAG_KEY_LENGTH} characters")
    if key.startswith(RESERVED_TAG_PREFIX):
        raise FalInputError(
            f"{where}: tag keys starting with {RESERVED_TAG_PREFIX!r} are reserved by fal ({key!r})"
        )
    if not all(c.isascii() and c.isprintable() and c != "," for c in value):
        raise FalInputError(
            f"{where}: the value of tag {key!r} must be printable ASCII without ',' (fal separates tags with commas)"
        )
    if len(value) > MAX_TAG_VALUE_LENGTH:
        raise FalInputError(f"{where}: the value of tag {key!r} is over {MAX_TAG_VALUE_LENGTH} characters")


def request_tags(
    dag_id: str | None, task_id: str | None, tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The tags every request of a task carries: ``airflow.dag``, ``airflow.task`` and the user's.

    Dag and task ids are Airflow keys (letters, digits, '.', '_', '-'), always valid tag values;
    outside a task (no ids) only the user's tags are sent.
    """
    own = {DAG_TAG: dag_id, TASK_TAG: task_id}
    pairs = {**{k: str(v) for k, v in own.items() if v}, **check_tags(tags)}
    for key, value in pairs.items():
        _check_tag(key, value, "tags")
    size = sum(len(k) + len(v) for k, v in pairs.items())
    if size > MAX_TAGS_BYTES:
        raise FalInputError(
            f"tags: keys and values add up to {size} bytes with {DAG_TAG}/{TASK_TAG}; fal takes at most "
            f"{MAX_TAGS_BYTES}. Shorten or drop some tags."
        )
    return pairs


def tags_header(tags: Mapping[str, str]) -> str:
    """The ``X-Fal-Tags`` value: ``key=value`` pairs joined by commas."""
    return ",".join(f"{key}={value}" for key, value in tags.items())


def check_max_cost(value: Any, name: str = "max_cost") -> float | None:
    """A non-negative, finite amount in the price currency (``None``: no limit)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FalInputError(f"{name} must be a number (USD), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FalInputError(f"{name} must be a number (USD), got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise FalInputError(f"{name} must be a finite amount >= 0 (USD), got {value!r}")
    return float(value)


def check_budget_name(value: Any) -> str | None:
    """A budget name is an identifier (letters, digits, '_'; at most 64), as config keys are."""
    if value is None:
        return None
    if not isinstance(value, str) or not _BUDGET_NAME.fullmatch(value):
        raise FalInputError(
            f"budget must be an identifier (a letter or '_', then letters, digits or '_', at most 64), "
            f"got {value!r}; e.g. budget='nightly'"
        )
    return value
