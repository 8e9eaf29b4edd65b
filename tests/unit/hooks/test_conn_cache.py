"""Connection lookups shared by the hooks on one loop: once per TTL, failures retried, never cancelled."""

from __future__ import annotations

import asyncio

import pytest

from fal_provider.hooks import _calls
from fal_provider.hooks._calls import ConnFields, lookup_connection
from fal_provider.hooks.fal import FalHook
from tests.unit.hooks.hook_fakes import spy_aget_connection


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _calls.clear_connections()


class Fetcher:
    def __init__(self, fail: int = 0) -> None:
        self.calls = 0
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, conn_id: str) -> ConnFields:
        self.calls += 1
        await self.gate.wait()
        if self.calls <= self.fail:
            raise RuntimeError("secrets backend down")
        return ConnFields(found=True, password="id:secret", host=f"https://{conn_id}.test")


async def test_concurrent_lookups_share_one_fetch_per_connection_id() -> None:
    fetch = Fetcher()
    fetch.gate.clear()
    waiting = [asyncio.ensure_future(lookup_connection("fal_default", fetch)) for _ in range(50)]
    other = asyncio.ensure_future(lookup_connection("fal_other", fetch))
    await asyncio.sleep(0)
    fetch.gate.set()
    results = await asyncio.gather(*waiting)
    assert fetch.calls == 2
    assert {r.host for r in results} == {"https://fal_default.test"}
    assert (await other).host == "https://fal_other.test"


async def test_entry_expires_after_the_ttl() -> None:
    fetch = Fetcher()
    clock = [1000.0]
    await lookup_connection("fal_default", fetch, now=lambda: clock[0])
    clock[0] += _calls.CONN_TTL - 1
    await lookup_connection("fal_default", fetch, now=lambda: clock[0])
    assert fetch.calls == 1
    clock[0] += 2
    await lookup_connection("fal_default", fetch, now=lambda: clock[0])
    assert fetch.calls == 2


async def test_a_failed_lookup_is_not_cached() -> None:
    fetch = Fetcher(fail=1)
    with pytest.raises(RuntimeError, match="backend down"):
        await lookup_connection("fal_default", fetch)
    assert (await lookup_connection("fal_default", fetch)).found
    assert fetch.calls == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_lookup() -> None:
    fetch = Fetcher()
    fetch.gate.clear()
    first = asyncio.ensure_future(lookup_connection("fal_default", fetch))
    second = asyncio.ensure_future(lookup_connection("fal_default", fetch))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    fetch.gate.set()
    assert (await second).password == "id:secret"
    assert fetch.calls == 1


def test_each_loop_has_its_own_entries() -> None:
    fetch = Fetcher()
    asyncio.run(lookup_connection("fal_default", fetch))
    asyncio.run(lookup_connection("fal_default", fetch))
    assert fetch.calls == 2, "a task of one loop cannot be awaited from another"


async def test_many_hooks_resolve_the_connection_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FAL_DEFAULT", '{"conn_type": "fal", "password": "k-id:k-secret"}')
    calls = spy_aget_connection(monkeypatch)
    settings = await asyncio.gather(*(FalHook().aget_settings() for _ in range(100)))
    assert calls == ["fal_default"]
    assert {s.key for s in settings} == {"k-id:k-secret"}
    assert "k-secret" not in repr(_calls._conn_caches)


async def test_missing_default_connection_is_cached_but_a_missing_named_one_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_FAL_DEFAULT", raising=False)
    monkeypatch.setenv("FAL_KEY", "env-id:env-secret")
    first, second = await asyncio.gather(FalHook().aget_settings(), FalHook().aget_settings())
    assert first.key == second.key == "env-id:env-secret"
    for _ in range(2):
        with pytest.raises(Exception, match="fal_typo"):
            await FalHook("fal_typo").aget_settings()
