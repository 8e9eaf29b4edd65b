"""The callback URL fal is given, and reading it back in the receiver.

The URL names who waits: a deferred task (``dag_id``, ``run_id``, ``task_id``, ``map_index``) or an
event channel watched by an ``AssetWatcher``. The query string is not covered by fal's signature,
so the receiver treats the task identity as a hint only: it resumes a task only if that task's
trigger waits for the request id the signature vouches for.

A channel has no such request id to check, so a channel URL carries a token: an HMAC-SHA256 of the
channel under the deployment's secret. Only someone who holds the secret can make a URL that fires
a channel, and a captured callback cannot be replayed onto another channel.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

#: Where the plugin mounts the receiver on the API server (``url_prefix`` + route).
URL_PREFIX = "/fal"
WEBHOOK_ROUTE = "/webhook"
WEBHOOK_PATH = URL_PREFIX + WEBHOOK_ROUTE

_CHANNEL = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_ID_MAX = 250
TOKEN_PARAM = "token"
MIN_SECRET_LENGTH = 16
#: Keeps channel tokens from ever equalling an HMAC the same secret makes for another purpose.
_TOKEN_CONTEXT = b"fal-provider webhook channel\n"


class WebhookUrlError(ValueError):
    """The base URL or the identity cannot make a usable callback URL."""


class WebhookSecret:
    """The key of the channel tokens; its value never shows in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_LENGTH:
            raise WebhookUrlError(
                f"webhook_secret must be a string of at least {MIN_SECRET_LENGTH} characters "
                "(e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        self._value = value.strip().encode("utf-8")

    @classmethod
    def from_config(cls, raw: Any) -> WebhookSecret | None:
        """None when unset; an error when set but unusable (too short, not a string)."""
        if raw is None or raw == "":
            return None
        return cls(raw if isinstance(raw, str) else "")

    def token(self, channel: str) -> str:
        """The channel's token: hex HMAC-SHA256, 64 characters, unguessable without the secret."""
        message = _TOKEN_CONTEXT + validate_channel(channel).encode("utf-8")
        return hmac.new(self._value, message, hashlib.sha256).hexdigest()

    def token_matches(self, channel: str, token: str | None) -> bool:
        """Constant-time comparison, so the token cannot be learnt byte by byte from timings."""
        if not token:
            return False
        return hmac.compare_digest(self.token(channel).encode(), token.encode("utf-8", "replace"))

    def __repr__(self) -> str:
        return "WebhookSecret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a WebhookSecret is not serialisable")


@dataclass(frozen=True)
class TaskIdentity:
    """The deferred task a callback is meant to wake."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    def __post_init__(self) -> None:
        for name in ("dag_id", "run_id", "task_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > _ID_MAX:
                raise WebhookUrlError(f"{name} must be a non-empty string of at most {_ID_MAX} characters")
        if isinstance(self.map_index, bool) or not isinstance(self.map_index, int) or self.map_index < -1:
            raise WebhookUrlError("map_index must be an integer >= -1")

    def to_query(self) -> dict[str, str]:
        query = {"dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id}
        if self.map_index != -1:
            query["map_index"] = str(self.map_index)
        return query

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> TaskIdentity | None:
        """None when the URL names no task (a channel callback); an error when it names one badly."""
        names = ("dag_id", "run_id", "task_id")
        present = [name for name in names if query.get(name)]
        if not present:
            return None
        if len(present) != len(names):
            raise WebhookUrlError("dag_id, run_id and task_id must be given together")
        raw_index = query.get("map_index", "-1")
        try:
            map_index = int(raw_index)
        except ValueError:
            raise WebhookUrlError("map_index must be an integer") from None
        return cls(query["dag_id"], query["run_id"], query["task_id"], map_index)

    @classmethod
    def from_task_instance(cls, ti: Any) -> TaskIdentity:
        """From a (runtime) task instance, e.g. ``context["ti"]`` in ``execute``."""
        map_index = getattr(ti, "map_index", -1)
        return cls(ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else int(map_index))


def validate_channel(channel: str) -> str:
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise WebhookUrlError("channel must be 1-100 characters of letters, digits and _ . : -")
    return channel


def receiver_url(base_url: str) -> str:
    """``{base}/fal/webhook``, keeping any path prefix the API server is served under."""
    if not base_url or not isinstance(base_url, str):
        raise WebhookUrlError(
            "No webhook base URL: set the 'webhook_base_url' extra of the fal connection to the public "
            "URL of the Airflow API server (e.g. https://airflow.example.com)"
        )
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WebhookUrlError("webhook_base_url must be an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise WebhookUrlError("webhook_base_url must not carry a query or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith(WEBHOOK_PATH):
        path += WEBHOOK_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def build_webhook_url(
    base_url: str,
    identity: TaskIdentity | None = None,
    *,
    channel: str | None = None,
    secret: WebhookSecret | None = None,
) -> str:
    """The ``fal_webhook`` URL for one waiting task, or for an event channel (exactly one of them).

    A channel URL needs the deployment's ``secret`` (see ``settings.channel_secret``): without its
    token the receiver refuses the callback, so building one without it would only lose callbacks.
    """
    if (identity is None) == (channel is None):
        raise WebhookUrlError("give either the waiting task's identity or a channel")
    if identity is not None:
        query = identity.to_query()
    else:
        if secret is None:
            raise WebhookUrlError(
                "A channel URL needs the deployment's webhook secret: set the 'webhook_secret' extra "
                "of the fal connection (or [fal] webhook_secret) and pass "
                "secret=fal_provider.webhooks.settings.channel_secret(), or use "
                "fal_provider.webhooks.settings.channel_webhook_url(channel)"
            )
        name = validate_channel(str(channel))
        query = {"channel": name, TOKEN_PARAM: secret.token(name)}
    return f"{receiver_url(base_url)}?{urlencode(query)}"
