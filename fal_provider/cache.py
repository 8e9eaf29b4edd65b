"""The result cache: the same input, under the same cache key, is paid for once.

A fal request is billed by its output, so a rerun, a backfill or a cleared task that sends the same
input again pays again for an answer it already has. With ``cache=True`` the inference operator
looks the input up here first and returns the stored result without calling fal.

**The key** (:func:`cache_key`) is a SHA-256 of the app id, the path, the arguments as canonical
JSON (sorted keys, no whitespace, so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` are one input)
and the user's ``cache_version`` (bump it to invalidate everything a task cached, e.g. after a
model update fal does not version). Request options (priority, runner hint, timeouts, ...) are not
part of it: they change how a request runs, not what it answers.

**The store** is any ``ObjectStoragePath`` (a local folder, ``s3://conn@bucket/prefix``, ...)::

    <root>/entries/<key[:2]>/<key>.json   the result, where it came from, what it cost
    <root>/media/<sha256 of the bytes>.<ext>  copies of the media the results point at
    <root>/claims/<key>.json              "a task is paying for this key right now"

fal's CDN files expire, so a stored result whose URLs point at fal would break once they do: the
media a result references are copied under ``media/`` (named by content, so two results with the
same image share one file) and the stored result's ``url`` fields point at the copies, with the
original kept in ``fal_url``. The copies' URLs are the store's own URIs (``file:///...`` for a
local folder, ``s3://...``): any Python consumer reads them with ``ObjectStoragePath(url)``, and a
later fal operator that receives one as an input uploads the file to fal's CDN first (see
:meth:`ResultCache.upload_inputs`), because fal cannot read a user's storage. Entries and media
are published with :class:`~fal_provider.results.StagedOutput`: a reader never sees an entry whose
media are not all there.

**Two tasks with the same key at the same time** pay once: the first creates the claim record with
an exclusive create before it submits and writes the request id into it right after; the second
finds the claim and waits for that request instead of submitting its own. On a local filesystem
the exclusive create is ``open(..., "xb")`` (``O_CREAT | O_EXCL``), atomic on POSIX (and on NFS v3+).
On object stores it is the filesystem's ``"xb"`` mode where it has one (conditional writes:
``If-None-Match: *`` on S3, ``ifGenerationMatch=0`` on GCS); a filesystem without it gets a
check-then-write that two tasks starting within the same instant can both pass (logged once). A
claim whose owner died before it submitted is taken over after :data:`CLAIM_STALE_AFTER` seconds.

This module does no fal call of its own: callers pass the hook's media download and upload, so it
sits below the hook and the operators and both can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fal_provider.exceptions import FalError, FalInputError
from fal_provider.models import canonical_json
from fal_provider.models import input_digest as input_digest  # its home is models; still importable here
from fal_provider.results import MediaFetch, StagedOutput, iter_media

log = logging.getLogger(__name__)

#: Part of every key: a change of what a key means (or of the entry format) starts a fresh cache.
CACHE_FORMAT = 1
#: A claim with no request id yet, older than this, belongs to a task that died before submitting.
CLAIM_STALE_AFTER = 300.0
#: How long a task waits for another task's claim to name its request before it pays itself.
CLAIM_WAIT = 120.0
CONFIG_SECTION = "fal"
CONFIG_KEY = "cache_path"


def priced(hook: Any, app_id: str, units: float | None) -> tuple[float | None, str | None]:
    """Billable units times the endpoint's list price (``hook.price_or_none``, which never raises);
    ``(None, None)`` when either is unknown."""
    price = hook.price_or_none(app_id) if units is not None and hasattr(hook, "price_or_none") else None
    if price is None or units is None:
        return None, None
    return float(price.cost(float(units))), price.currency


def cached_run(
    hook: Any,
    app_id: str,
    arguments: Mapping[str, Any],
    *,
    cache: ResultCache | Any,
    path: str = "",
    cache_version: str | int | None = None,
    refresh_cache: bool = False,
    timeout: float | None = None,
) -> Any:
    """``hook.run`` (fal's synchronous call) through the result cache, for TaskFlow code and scripts.

    ``cache``: a :class:`ResultCache` or its location. A hit returns the stored result (URLs on the
    cached copies) without calling fal and logs "cache hit, saved ~X"; a miss runs the model, copies
    its media into the cache and returns the stored result. Inputs naming cached copies are
    uploaded to fal's CDN first. There is no claim: a synchronous run is short, and two callers
    racing on one key each pay (use the operator, which claims, for long requests).
    """
    store = cache if isinstance(cache, ResultCache) else ResultCache(cache)
    store.check_writable()
    key = cache_key(app_id, arguments, path=path, cache_version=cache_version)
    entry = None if refresh_cache else store.get(key)
    if entry is not None:
        log.info("%s: cache hit, saved ~%s (result of fal request %s)", app_id, entry.saved, entry.request_id)
        return entry.result
    sent = store.upload_inputs(
        dict(arguments), lambda data, kind, name: hook.upload(data, content_type=kind, file_name=name)
    )
    fetched = hook.run_with_usage(app_id, sent, path=path, timeout=timeout)
    cost, currency = priced(hook, app_id, fetched.billable_units)
    stored = store.put(
        key,
        fetched.data,
        app_id=app_id,
        path=path,
        request_id=fetched.request_id,
        cost=cost,
        currency=currency,
        fetch=hook.fetch_media,
    )
    return stored.result


class FalCacheError(FalInputError):
    """The cache location is not usable (missing, unwritable, not a URI): fix the configuration."""


def cache_key(
    app_id: str, arguments: Mapping[str, Any], *, path: str = "", cache_version: str | int | None = None
) -> str:
    """The key a result is stored under: app id, path, canonical arguments and ``cache_version``."""
    material = [CACHE_FORMAT, str(app_id).strip().strip("/"), (path or "").strip("/"), dict(arguments)]
    material.append(None if cache_version is None else str(cache_version))
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


def format_cost(cost: float | None, currency: str | None) -> str:
    """``0.003 USD``, or ``unknown`` when nobody could price the request."""
    if cost is None or not math.isfinite(cost):
        return "unknown"
    return f"{cost:.6g} {currency or 'USD'}"


@dataclass
class CacheEntry:
    """One stored result and what it cost when it was paid for."""

    key: str
    app_id: str
    path: str
    result: Any
    request_id: str | None = None
    created_at: float = field(default_factory=time.time)
    cost: float | None = None
    currency: str | None = None
    format: int = CACHE_FORMAT

    @property
    def saved(self) -> str:
        return format_cost(self.cost, self.currency)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheEntry:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class Claim:
    """Who is paying for a key right now, and (once submitted) for which request."""

    owner: str
    created_at: float
    request: dict[str, Any] | None = None

    def stale(self, now: float | None = None) -> bool:
        return self.request is None and (now or time.time()) - self.created_at > CLAIM_STALE_AFTER


def configured_root(explicit: Any = None, connection_path: str | None = None) -> Any:
    """The cache location: the operator's ``cache_path``, else the connection's ``cache_path``
    extra, else ``[fal] cache_path``; ``None`` when none is set."""
    if explicit not in (None, ""):
        return explicit
    if connection_path:
        return connection_path
    from fal_provider._compat import conf

    try:
        value = conf.get(CONFIG_SECTION, CONFIG_KEY, fallback=None)
    except Exception:  # an unreadable config is the same as no config here
        value = None
    return value or None


def _as_path(root: Any) -> Any:
    from airflow.sdk import ObjectStoragePath

    if isinstance(root, ObjectStoragePath):
        return root
    text = os.fspath(root) if isinstance(root, os.PathLike) else str(root)
    if "://" not in text:
        text = "file://" + os.path.abspath(os.path.expanduser(text))
    return ObjectStoragePath(text)


def _is_local(path: Any) -> bool:
    return str(getattr(path, "protocol", "") or "file") in ("file", "local")


def _extension(content_type: str | None, media: Mapping[str, Any]) -> str:
    guessed = mimetypes.guess_extension((content_type or media.get("content_type") or "").split(";")[0])
    if guessed:
        return guessed
    name = str(media.get("file_name") or "")
    suffix = os.path.splitext(name)[1]
    return suffix if suffix[1:].isalnum() and len(suffix) <= 8 else ".bin"


class ResultCache:
    """Results stored under an ``ObjectStoragePath``, keyed by :func:`cache_key`."""

    def __init__(self, root: Any) -> None:
        try:
            self.root = _as_path(root)
        except Exception as err:
            raise FalCacheError(
                f"cache_path {str(root)!r} is not a usable URI or ObjectStoragePath (e.g. "
                f"'/data/fal-cache' or 's3://aws_default@bucket/fal-cache'): {err}"
            ) from None
        self.uri = str(self.root).rstrip("/")
        self._warned_atomic = False

    def __repr__(self) -> str:
        return f"ResultCache({self.uri!r})"

    # -- paths ---------------------------------------------------------------------------------

    def entry_path(self, key: str) -> Any:
        return self.root / "entries" / key[:2] / f"{key}.json"

    def claim_path(self, key: str) -> Any:
        return self.root / "claims" / f"{key}.json"

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` names a file inside this cache (only those are ever read as inputs)."""
        return isinstance(uri, str) and uri.startswith(self.uri + "/") and "/../" not in uri

    # -- checks --------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Write and remove a probe file; any failure is a :class:`FalCacheError`, before fal is called."""
        probe = self.root / "claims" / f".probe-{uuid.uuid4().hex}"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except Exception as err:
            raise FalCacheError(
                f"The fal result cache at {self.uri} cannot be written ({type(err).__name__}: {err}). "
                "Point cache_path (the operator argument, the connection's 'cache_path' extra or "
                "[fal] cache_path) at a writable folder or bucket, or set cache=False. Nothing was "
                "submitted."
            ) from None

    # -- entries -------------------------------------------------------------------------------

    def get(self, key: str) -> CacheEntry | None:
        """The stored entry, or ``None`` (never stored, unreadable, or a media copy has gone)."""
        path = self.entry_path(key)
        try:
            if not path.exists():
                return None
            entry = CacheEntry.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError, TypeError) as err:
            log.warning("Ignoring an unreadable fal cache entry %s: %s", path, err)
            return None
        for url in self._copies(entry.result):
            if not _as_path(url).exists():
                log.warning("fal cache entry %s points at %s, which is gone; treating it as a miss", key, url)
                return None
        return entry

    def _copies(self, value: Any) -> Iterator[str]:
        """The URLs in a stored result that name copies in this cache."""
        if isinstance(value, Mapping):
            for item in value.values():
                yield from self._copies(item)
        elif isinstance(value, list):
            for item in value:
                yield from self._copies(item)
        elif isinstance(value, str) and self.owns(value):
            yield value

    def put(
        self,
        key: str,
        result: Any,
        *,
        app_id: str,
        path: str = "",
        request_id: str | None = None,
        cost: float | None = None,
        currency: str | None = None,
        fetch: MediaFetch | None = None,
    ) -> CacheEntry:
        """Copy the result's media into the cache, then store the entry pointing at the copies.

        Returns the stored entry; its ``result`` is a private copy with the URLs rewritten.
        """
        stored = json.loads(json.dumps(result))
        output = StagedOutput(on_error=self._unwritable)
        try:
            for field_path, media in list(iter_media(stored)):
                self._stage_media(output, field_path, media, fetch)
            entry = CacheEntry(key, app_id, path, stored, request_id=request_id, cost=cost, currency=currency)
            output.stage(self.entry_path(key), json.dumps(asdict(entry), sort_keys=True).encode())
            output.publish()
        except BaseException:
            output.rollback()
            raise
        return entry

    def _stage_media(
        self, output: StagedOutput, field_path: str, media: dict[str, Any], fetch: MediaFetch | None
    ) -> None:
        original = str(media["url"])
        if self.owns(original):  # already a copy (a result built from cached inputs)
            return
        try:
            data, content_type = self.read(original, fetch)
        except (FalError, OSError, ValueError) as err:
            shown = original if not original.startswith("data:") else "data: URI"
            raise FalCacheError(
                f"Cannot copy fal media {shown} at {field_path} into the cache: {err}"
            ) from None
        copy = self.root / "media" / (hashlib.sha256(data).hexdigest() + _extension(content_type, media))
        if not copy.exists():
            output.stage(copy, data)
        media["fal_url"] = None if original.startswith("data:") else original
        media["url"] = str(copy)

    def _unwritable(self, path: Any, err: BaseException) -> FalCacheError:
        return FalCacheError(f"Cannot write {path} into the fal result cache: {type(err).__name__}: {err}")

    def delete(self, key: str) -> bool:
        """Forget one entry (its media stay; other entries may share them). ``True`` if it existed."""
        path = self.entry_path(key)
        existed = bool(path.exists())
        path.unlink(missing_ok=True)
        return existed

    def entries(self) -> Iterator[CacheEntry]:
        """Every readable entry (for reports and for clearing entries by app or age)."""
        folder = self.root / "entries"
        if not folder.exists():
            return
        for shard in folder.iterdir():
            for path in shard.iterdir():
                if path.name.endswith(".json"):
                    with contextlib.suppress(OSError, ValueError, TypeError):
                        yield CacheEntry.from_json(json.loads(path.read_bytes()))

    # -- media as inputs -----------------------------------------------------------------------

    def read(
        self, url: str, fetch: MediaFetch | None = None, timeout: float = 120.0
    ) -> tuple[bytes, str | None]:
        """The bytes of a media URL: a copy in this cache directly, anything else through ``fetch``."""
        if self.owns(url):
            return _as_path(url).read_bytes(), mimetypes.guess_type(url)[0]
        from fal_provider.results import fetch_media_bytes

        return fetch_media_bytes(url, timeout, fetch)

    def upload_inputs(self, arguments: Any, upload: Callable[[bytes, str | None, str], str]) -> Any:
        """``arguments`` with every string naming a file of this cache replaced by an upload of it.

        fal reads inputs from URLs it can reach, not from the user's storage, so a cached result
        passed on to the next model is uploaded first (``upload(data, content_type, file_name)``,
        the hook's CDN upload). Only files inside this cache are read: a templated argument cannot
        make the task upload an arbitrary local file.
        """
        uploaded: dict[str, str] = {}

        def replace(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: replace(v) for k, v in value.items()}
            if isinstance(value, list):
                return [replace(v) for v in value]
            if isinstance(value, str) and self.owns(value):
                if value not in uploaded:
                    data, content_type = self.read(value)
                    uploaded[value] = upload(data, content_type, value.rsplit("/", 1)[-1])
                return uploaded[value]
            return value

        return replace(arguments)

    # -- claims --------------------------------------------------------------------------------

    def read_claim(self, key: str) -> Claim | None:
        path = self.claim_path(key)
        try:
            data = json.loads(path.read_bytes())
            return Claim(str(data["owner"]), float(data["created_at"]), data.get("request"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("Ignoring an unreadable fal cache claim %s: %s", path, err)
            return None

    def claim(self, key: str, owner: str) -> Claim | None:
        """Claim ``key`` for ``owner``: ``None`` when the claim is ours (new, ours already, or taken
        over from a stale one), else the other owner's claim."""
        existing = self.read_claim(key)
        if existing is not None and existing.owner != owner and not existing.stale():
            return existing
        if existing is not None and existing.owner != owner:
            log.info("Taking over a stale fal cache claim on %s from %s", key[:12], existing.owner)
            self.claim_path(key).unlink(missing_ok=True)
        elif existing is not None:
            return None
        body = json.dumps(asdict(Claim(owner, time.time()))).encode()
        if self._create_exclusive(self.claim_path(key), body):
            return None
        return self.read_claim(key) or Claim("unknown", time.time())

    def record_request(self, key: str, owner: str, request: Mapping[str, Any]) -> None:
        """Name the request a claim paid for, so a task with the same key waits for it."""
        claim = Claim(owner, time.time(), dict(request))
        try:
            self.claim_path(key).write_bytes(json.dumps(asdict(claim)).encode())
        except Exception as err:  # the request is paid for; a lost claim only risks a second payer
            log.warning("Could not record fal request in the cache claim %s: %s", key[:12], err)

    def release(self, key: str, owner: str) -> None:
        """Drop our claim (after the entry is stored, or after our request failed)."""
        claim = self.read_claim(key)
        if claim is not None and claim.owner == owner:
            with contextlib.suppress(Exception):
                self.claim_path(key).unlink(missing_ok=True)

    def _create_exclusive(self, path: Any, body: bytes) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except Exception as err:
            raise self._unwritable(path, err) from None
        try:
            with path.open("xb") as handle:
                handle.write(body)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            pass  # no exclusive create on this filesystem
        if not self._warned_atomic:
            self._warned_atomic = True
            log.warning(
                "%s has no exclusive create; two tasks claiming the same fal cache key at the same "
                "instant may both pay",
                self.uri,
            )
        if path.exists():
            return False
        path.write_bytes(body)
        return True
