"""The result cache: key canonicalisation, the store, media copies, claims."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from fal_provider.cache import (
    CLAIM_STALE_AFTER,
    FalCacheError,
    ResultCache,
    cache_key,
    canonical_json,
    configured_root,
    format_cost,
    input_digest,
)
from fal_provider.exceptions import FalInputError

PNG = b"\x89PNG\r\n\x1a\nfake-image"


def fetcher(files: dict[str, bytes]) -> Any:
    calls: list[str] = []

    def fetch(url: str, timeout: float) -> tuple[bytes, str | None]:
        calls.append(url)
        return files[url], "image/png"

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


# ----------------------------------------------------------------------------- the key


def test_key_ignores_key_order_and_whitespace_but_not_values() -> None:
    a = cache_key("fal-ai/flux/schnell", {"prompt": "x", "seed": 7, "opts": {"b": 1, "a": [1, 2]}})
    b = cache_key("fal-ai/flux/schnell", {"opts": {"a": [1, 2], "b": 1}, "seed": 7, "prompt": "x"})
    assert a == b
    assert cache_key("fal-ai/flux/schnell", {"prompt": "x", "seed": 8, "opts": {"b": 1, "a": [1, 2]}}) != a
    assert cache_key("fal-ai/flux/schnell", {"prompt": "x", "seed": 7, "opts": {"b": 1, "a": [2, 1]}}) != a


def test_key_covers_app_path_and_version() -> None:
    args = {"prompt": "x"}
    base = cache_key("fal-ai/flux/schnell", args)
    assert cache_key("fal-ai/flux/dev", args) != base
    assert cache_key("fal-ai/flux/schnell", args, path="/sub") != base
    assert cache_key("fal-ai/flux/schnell", args, cache_version="2") != base
    assert cache_key("fal-ai/flux/schnell", args, cache_version=2) == cache_key(
        "fal-ai/flux/schnell", args, cache_version="2"
    )
    assert cache_key("/fal-ai/flux/schnell/", args) == base  # one spelling of the app id
    # 1 and 1.0 are one JSON number for fal, but True is not 1
    assert cache_key("a/b", {"n": True}) != cache_key("a/b", {"n": 1})


def test_canonical_json_refuses_what_json_cannot_carry() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    with pytest.raises(FalInputError, match="JSON"):
        canonical_json({"x": float("nan")})
    with pytest.raises(FalInputError, match="JSON"):
        canonical_json({"x": object()})
    assert input_digest({"a": 1, "b": 2}) == input_digest({"b": 2, "a": 1})


def test_format_cost() -> None:
    assert format_cost(0.003, "USD") == "0.003 USD"
    assert format_cost(None, None) == "unknown"


# ----------------------------------------------------------------------------- the store


def test_put_copies_media_and_get_returns_the_copy(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache")
    fetch = fetcher({"https://cdn/a.png": PNG})
    result = {"images": [{"url": "https://cdn/a.png", "width": 4}], "seed": 7}
    key = cache_key("fal-ai/flux/schnell", {"prompt": "x"})
    stored = cache.put(
        key, result, app_id="fal-ai/flux/schnell", request_id="r1", cost=0.003, currency="USD", fetch=fetch
    )

    image = stored.result["images"][0]
    assert image["fal_url"] == "https://cdn/a.png"
    assert image["url"].startswith("file://" + str(tmp_path / "cache" / "media"))
    assert Path(image["url"].removeprefix("file://")).read_bytes() == PNG
    assert result["images"][0]["url"] == "https://cdn/a.png"  # the caller's value is untouched

    entry = cache.get(key)
    assert entry is not None and entry.result == stored.result and entry.request_id == "r1"
    assert entry.saved == "0.003 USD"
    assert cache.get(cache_key("fal-ai/flux/schnell", {"prompt": "y"})) is None


def test_media_are_content_addressed_so_the_same_bytes_keep_one_url(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    fetch = fetcher({"https://cdn/1/a.png": PNG, "https://cdn/2/b.png": PNG})
    one = cache.put("k1" * 32, {"image": {"url": "https://cdn/1/a.png"}}, app_id="a/b", fetch=fetch)
    two = cache.put("k2" * 32, {"image": {"url": "https://cdn/2/b.png"}}, app_id="a/b", fetch=fetch)
    assert one.result["image"]["url"] == two.result["image"]["url"]
    assert len(list((tmp_path / "media").iterdir())) == 1


def test_an_entry_whose_copy_is_gone_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    stored = cache.put(
        "k" * 64,
        {"image": {"url": "https://cdn/a.png"}},
        app_id="a/b",
        fetch=fetcher({"https://cdn/a.png": PNG}),
    )
    Path(stored.result["image"]["url"].removeprefix("file://")).unlink()
    assert cache.get("k" * 64) is None


def test_a_failed_media_copy_stores_nothing(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)

    def broken(url: str, timeout: float) -> tuple[bytes, str | None]:
        if url.endswith("b.png"):
            raise OSError("CDN file expired")
        return PNG, "image/png"

    result = {"images": [{"url": "https://cdn/a.png"}, {"url": "https://cdn/b.png"}]}
    with pytest.raises(FalCacheError, match=r"b\.png"):
        cache.put("k" * 64, result, app_id="a/b", fetch=broken)
    assert cache.get("k" * 64) is None
    assert not any((tmp_path / "media").glob("*.png")) if (tmp_path / "media").exists() else True


def test_delete_and_entries(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.put("a" * 64, {"v": 1}, app_id="x/one")
    cache.put("b" * 64, {"v": 2}, app_id="x/two")
    assert sorted(e.app_id for e in cache.entries()) == ["x/one", "x/two"]
    assert cache.delete("a" * 64) is True and cache.delete("a" * 64) is False
    assert [e.app_id for e in cache.entries()] == ["x/two"]


def test_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    path = Path(cache.entry_path("c" * 64).path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert cache.get("c" * 64) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_location_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(FalCacheError, match="cannot be written") as err:
            ResultCache(folder).check_writable()
        assert isinstance(err.value, FalInputError) and "Nothing was submitted" in str(err.value)
    finally:
        folder.chmod(stat.S_IRWXU)


def test_a_file_where_the_folder_should_be_is_an_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FalCacheError, match="cannot be written"):
        ResultCache(blocker / "cache").check_writable()


def test_configured_root_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__FAL__CACHE_PATH", "/from/config")
    assert configured_root("/explicit", "/conn") == "/explicit"
    assert configured_root(None, "/conn") == "/conn"
    assert configured_root(None, None) == "/from/config"
    monkeypatch.delenv("AIRFLOW__FAL__CACHE_PATH")
    assert configured_root(None, None) is None


# ----------------------------------------------------------------------------- inputs


def test_upload_inputs_replaces_only_files_of_this_cache(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    stored = cache.put(
        "k" * 64,
        {"image": {"url": "https://cdn/a.png"}},
        app_id="a/b",
        fetch=fetcher({"https://cdn/a.png": PNG}),
    )
    copy = stored.result["image"]["url"]
    secret = tmp_path.parent / "secret.txt"
    uploads: list[tuple[bytes, str | None, str]] = []

    def upload(data: bytes, kind: str | None, name: str) -> str:
        uploads.append((data, kind, name))
        return "https://cdn/uploaded.png"

    arguments = {"image_url": copy, "images": [copy], "other": f"file://{secret}", "n": 1}
    sent = cache.upload_inputs(arguments, upload)
    assert sent == {
        "image_url": "https://cdn/uploaded.png",
        "images": ["https://cdn/uploaded.png"],
        "other": f"file://{secret}",  # outside the cache: never read
        "n": 1,
    }
    assert [u[0] for u in uploads] == [PNG]  # one upload per file
    assert not cache.owns(cache.uri + "/../secret.txt") and not cache.owns(cache.uri + "x/a")


# ----------------------------------------------------------------------------- claims


def test_claim_is_exclusive_and_names_its_request(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    key = "d" * 64
    assert cache.claim(key, "task-a") is None
    assert cache.claim(key, "task-a") is None  # our own claim (a retry of the owner)
    other = cache.claim(key, "task-b")
    assert other is not None and other.owner == "task-a" and other.request is None
    cache.record_request(key, "task-a", {"app_id": "a/b", "request_id": "r1"})
    seen = cache.claim(key, "task-b")
    assert seen is not None and seen.request == {"app_id": "a/b", "request_id": "r1"}
    cache.release(key, "task-b")  # not the owner: nothing happens
    assert cache.read_claim(key) is not None
    cache.release(key, "task-a")
    assert cache.read_claim(key) is None
    assert cache.claim(key, "task-b") is None


def test_a_stale_claim_without_request_is_taken_over(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    key = "e" * 64
    path = Path(cache.claim_path(key).path)
    path.parent.mkdir(parents=True)
    old = time.time() - CLAIM_STALE_AFTER - 1
    path.write_text(json.dumps({"owner": "dead-task", "created_at": old, "request": None}))
    assert cache.claim(key, "task-b") is None
    claim = cache.read_claim(key)
    assert claim is not None and claim.owner == "task-b"


def test_concurrent_claims_have_one_winner(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = ResultCache(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda i: cache.claim("f" * 64, f"task-{i}"), range(8)))
    assert sum(o is None for o in outcomes) == 1
