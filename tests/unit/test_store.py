import asyncio
import json

from tinydb import TinyDB

from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.store_tinydb import TinyDbStore


def crash(store: TinyDbStore) -> None:
    """As after kill -9: the kernel drops the store's lock; nothing more is written."""
    store._unlock()


async def test_put_is_durable_before_it_returns(tmp_path):
    path = tmp_path / "lb.json"
    store = TinyDbStore(str(path))
    await store.open()
    await store.put("meetings", "default m1", {"server": "bbb1"})
    await asyncio.gather(*(store.put("meetings", f"default m{i}", {"server": "bbb2"}) for i in range(2, 50)))
    assert await store.put_if_absent("meetings", "default m1", {"server": "other"}) == {"server": "bbb1"}
    await store.delete("meetings", "default m3")
    # Not closed (as after kill -9): a second store opened on the same files sees every write,
    # and folds them into a TinyDB file any TinyDB can read.
    crash(store)
    again = TinyDbStore(str(path))
    await again.open()
    keys = set(await again.all("meetings"))
    assert len(keys) == 48 and "default m3" not in keys
    assert {doc["_key"] for doc in TinyDB(str(path)).table("meetings").all()} == keys
    await again.close()
    assert not list(tmp_path.glob("*.tmp-*"))


async def test_a_torn_journal_line_is_skipped(tmp_path):
    path = tmp_path / "lb.json"
    store = TinyDbStore(str(path))
    await store.open()
    await store.put("meetings", "default a", {"server": "s1"})
    with open(store.journal_path, "a") as journal:
        journal.write('{"t":"meetings","k":"default b","d":{"ser')  # a crash in the middle of a write
    crash(store)
    again = TinyDbStore(str(path))
    await again.open()
    assert await again.all("meetings") == {"default a": {"server": "s1"}}
    await again.close()


async def test_the_journal_is_folded_into_the_tinydb_file(tmp_path):
    path = tmp_path / "lb.json"
    store = TinyDbStore(str(path))
    store.COMPACT_AFTER_BYTES = 2000
    await store.open()
    for i in range(100):
        await store.put("meetings", f"default m{i}", {"server": "bbb1", "n": i})
    await store.close()
    journals = list(tmp_path.glob("lb.json.journal*"))
    assert sum(j.stat().st_size for j in journals) < 4000  # folded ones are gone
    assert len(TinyDB(str(path)).table("meetings").all()) >= 80
    again = TinyDbStore(str(path))
    await again.open()
    assert len(await again.all("meetings")) == 100
    await again.close()


async def test_registry_round_trip(tmp_path):
    store = TinyDbStore(str(tmp_path / "lb.json"))
    await store.open()
    registry = MeetingRegistry(store)
    record = MeetingRecord("default", "room", "bbb2", 123, voice_bridge="71234")
    await registry.save(record)
    await store.close()
    store = TinyDbStore(str(tmp_path / "lb.json"))
    await store.open()
    again = MeetingRegistry(store)
    await again.load()
    assert again.get("default", "room") == record
    assert again.voice_bridge_in_use("bbb2", "71234") and not again.voice_bridge_in_use("bbb1", "71234")
    assert again.holders_of("room") == {"bbb2"}
    assert await again.forget(record)
    assert again.get("default", "room") is None and again.holders_of("room") == set()
    await store.close()


async def test_a_leftover_temp_file_is_ignored_and_a_corrupt_file_is_reported(tmp_path):
    path = tmp_path / "lb.json"
    path.write_text(json.dumps({"meetings": {"1": {"_key": "default x", "server": "s"}}}))
    (tmp_path / "lb.json.tmp-999").write_text("{half")
    store = TinyDbStore(str(path))
    await store.open()
    assert await store.get("meetings", "default x") == {"server": "s"}
    await store.close()
    path.write_text("{not json")
    broken = TinyDbStore(str(path))
    try:
        await broken.open()
        raise AssertionError("a corrupt store must not be opened silently")
    except Exception as exc:
        assert "not a valid TinyDB file" in str(exc)
