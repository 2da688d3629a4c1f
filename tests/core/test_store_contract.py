"""What every Store must do, checked against each implementation: TinyDB, memory and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lb_core.store import Store, StoreError
from lb_core.store_memory import MemoryStore
from lb_core.store_tinydb import TinyDbStore

MAKERS: dict[str, Callable[[Path], Store]] = {
    "tinydb": lambda tmp: TinyDbStore(str(tmp / "lb.json"), event_flush_interval_s=0.05),
    "memory": lambda tmp: MemoryStore(),
}
BACKENDS = [*sorted(MAKERS), "redis"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        from lb_core.store_redis import RedisStore

        server = request.getfixturevalue("redis_server")
        made: Store = RedisStore(server.url, request.getfixturevalue("redis_prefix"))
    else:
        made = MAKERS[request.param](tmp_path)
    await made.open()
    yield made
    await made.close()


async def test_put_then_get_and_all(store: Store) -> None:
    assert await store.get("meetings", "a") is None
    assert await store.all("meetings") == {}
    await store.put("meetings", "a", {"server": "bbb1", "n": 1, "nested": {"x": [1, 2]}})
    await store.put("meetings", "b", {"server": "bbb2"})
    await store.put("other", "a", {"kind": "other"})
    assert await store.get("meetings", "a") == {"server": "bbb1", "n": 1, "nested": {"x": [1, 2]}}
    assert await store.all("meetings") == {"a": {"server": "bbb1", "n": 1, "nested": {"x": [1, 2]}},
                                           "b": {"server": "bbb2"}}
    assert await store.all("other") == {"a": {"kind": "other"}}


async def test_put_replaces_the_whole_document(store: Store) -> None:
    await store.put("t", "k", {"a": 1, "b": 2})
    await store.put("t", "k", {"c": 3})
    assert await store.get("t", "k") == {"c": 3}


async def test_a_document_handed_over_is_copied(store: Store) -> None:
    doc = {"server": "bbb1"}
    await store.put("t", "k", doc)
    doc["server"] = "changed afterwards"
    assert await store.get("t", "k") == {"server": "bbb1"}


async def test_all_is_a_snapshot(store: Store) -> None:
    await store.put("t", "a", {"v": 1})
    snapshot = await store.all("t")
    await store.put("t", "b", {"v": 2})
    await store.delete("t", "a")
    assert snapshot == {"a": {"v": 1}}


async def test_put_if_absent_keeps_the_first(store: Store) -> None:
    assert await store.put_if_absent("meta", "instance", {"id": "first"}) == {"id": "first"}
    assert await store.put_if_absent("meta", "instance", {"id": "second"}) == {"id": "first"}
    assert await store.get("meta", "instance") == {"id": "first"}


async def test_concurrent_put_if_absent_agree_on_one_document(store: Store) -> None:
    results = await asyncio.gather(*(store.put_if_absent("meta", "x", {"id": i}) for i in range(20)))
    assert len({r["id"] for r in results}) == 1
    assert await store.get("meta", "x") == results[0]


async def test_delete_and_deleting_what_is_not_there(store: Store) -> None:
    await store.put("t", "k", {"v": 1})
    await store.delete("t", "k")
    await store.delete("t", "k")
    await store.delete("never", "seen")
    assert await store.get("t", "k") is None and await store.all("t") == {}


async def test_many_concurrent_writes_all_land(store: Store) -> None:
    await asyncio.gather(*(store.put("meetings", f"m{i}", {"i": i}) for i in range(100)))
    assert len(await store.all("meetings")) == 100


async def test_events_are_read_back_in_order_after_a_flush(store: Store) -> None:
    assert await store.read_events("00000001") == [] and await store.event_partitions() == []
    store.append_events([{"p": "00000001", "n": 1}, {"p": "00000002", "n": 10}, {"p": "00000001", "n": 2}])
    store.append_events({"p": "00000001", "n": i} for i in range(3, 6))
    assert [e["n"] for e in await store.read_events("00000001")] == [1, 2, 3, 4, 5]  # queued ones too
    await store.flush()
    assert [e["n"] for e in await store.read_events("00000001")] == [1, 2, 3, 4, 5]
    assert [e["n"] for e in await store.read_events("00000002")] == [10]
    assert await store.event_partitions() == ["00000001", "00000002"]


async def test_event_partitions_are_dropped_whole(store: Store) -> None:
    store.append_events([{"p": "00000001", "n": 1}, {"p": "00000002", "n": 2}])
    await store.flush()
    await store.drop_event_partitions(["00000001"])
    assert await store.event_partitions() == ["00000002"]
    assert await store.read_events("00000001") == []


async def test_writes_after_close_fail(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreError):
        await store.put("t", "k", {"v": 1})


async def test_stats_are_numbers(store: Store) -> None:
    await store.put("t", "k", {"v": 1})
    assert all(isinstance(v, int | float) for v in store.stats().values())


async def test_tables_lists_the_tables_holding_documents(store: Store) -> None:
    assert await store.tables() == []
    await store.put("meetings", "a", {"v": 1})
    await store.put("servers", "b", {"v": 2})
    await store.put("gone", "c", {"v": 3})
    await store.delete("gone", "c")
    assert await store.tables() == ["meetings", "servers"]


async def test_a_working_store_reports_no_problem(store: Store) -> None:
    assert await store.problem() is None
