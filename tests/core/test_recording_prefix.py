"""getRecordings' recordID items are prefixes, as in bbb-web ("only the first characters"), never
reaching another integration's recordings, and cost a bisection plus their matches, not a scan."""

from __future__ import annotations

import random
import string
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from lb_core.errors import ApiError
from lb_core.pool import Pool
from lb_core.recording_docs import RECORD_ID_ITEMS_MAX, Query
from lb_core.recording_index import RecordingIndex
from lb_core.store_memory import MemoryStore


def record_ids(reply) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.findtext("recordID") for r in reply.xml().iterfind("recordings/recording")]


def new_index() -> RecordingIndex:
    return RecordingIndex(MemoryStore(), Pool([]))


def keep(index: RecordingIndex, record_id: str, owner: str = "default", start: int = 0) -> None:
    index._keep({"record_id": record_id, "meeting_id": "m", "integration": owner, "state": "published",
                 "start_time": start, "metadata": {}})


def found(index: RecordingIndex, owner: str, items: list[str]) -> list[str]:
    return sorted(d["record_id"] for d in index.query(owner, Query(record_ids=items))[0])


async def test_a_record_id_item_matches_the_recordings_it_starts(lb_factory, sim):
    lb = await lb_factory(integrations=[{"name": "moodle", "secret": "moodle-secret"}])
    sim.add_recording("bbb1", "room", "abc-1", start_time=1)
    sim.add_recording("bbb1", "room", "abc-2", start_time=2)
    sim.add_recording("bbb1", "room", "abd-1", start_time=3)
    sim.add_recording("bbb2", "room", "abc-9", meta={"mconflb-institution": "moodle"}, start_time=4)
    await lb.lb.recording_sync.sync_all()
    assert record_ids(await lb.call("getRecordings", {"recordID": "abc"})) == ["abc-2", "abc-1"]
    assert record_ids(await lb.call("getRecordings", {"recordID": "ab"})) == ["abd-1", "abc-2", "abc-1"]
    assert record_ids(await lb.call("getRecordings", {"recordID": "abc,abd-1"})) == ["abd-1", "abc-2", "abc-1"]
    assert record_ids(await lb.call("getRecordings", {"recordID": "abc-1"})) == ["abc-1"]  # exact as before
    assert record_ids(await lb.call("getRecordings", {"recordID": "x"})) == []
    # moodle's recording under the same prefix is moodle's alone, both ways.
    assert record_ids(await lb.call("getRecordings", {"recordID": "abc"}, secret="moodle-secret")) == ["abc-9"]
    # Paging counts the matches.
    page = await lb.call("getRecordings", {"recordID": "ab", "limit": "1", "offset": "1"})
    assert record_ids(page) == ["abc-2"] and page.field("totalElements") == "3"


async def test_more_record_id_items_than_the_bound_are_refused_as_bbb_refuses_bad_parameters(lb, sim):
    sim.add_recording("bbb1", "room", "rec-1")
    await lb.lb.recording_sync.sync_all()
    items = ",".join(f"rec-{i}" for i in range(RECORD_ID_ITEMS_MAX))
    assert record_ids(await lb.call("getRecordings", {"recordID": items})) == ["rec-1"]
    reply = await lb.call("getRecordings", {"recordID": items + ",rec-x"})
    assert reply.field("returncode") == "FAILED" and reply.field("messageKey") == "invalidParameters"
    assert all(r["call"] != "getRecordings" or "rec-x" not in r["raw_query"]
               for r in sim.requests("bbb1"))  # refused before any server was asked


def test_a_prefix_costs_a_bisection_and_its_matches_not_a_scan() -> None:
    index = new_index()
    for i in range(100_000):
        keep(index, f"r-{i:06d}", owner=("moodle" if i % 2 else "default"), start=i)
    started = time.perf_counter()
    for _ in range(200):
        docs, total = index.query("default", Query(record_ids=["r-04242"]))
    per_query_ms = (time.perf_counter() - started) * 5
    assert total == 5 and {d["record_id"] for d in docs} == {f"r-04242{d}" for d in "02468"}
    assert per_query_ms < 2, per_query_ms  # a scan of 100 000 documents takes well over 10 ms


def test_changes_keep_the_sorted_keys_in_step() -> None:
    index = new_index()
    keep(index, "a-1")
    keep(index, "a-2")
    keep(index, "a-1", owner="other")  # the same ID moves to another integration
    assert found(index, "default", ["a"]) == ["a-2"] and found(index, "other", ["a"]) == ["a-1"]
    index._unkeep(index._docs.pop("a-2"))
    assert found(index, "default", ["a"]) == []


alphabet = st.text(alphabet="ab-1", min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(owned=st.lists(st.tuples(alphabet, st.sampled_from(["default", "moodle", "greenlight"])), max_size=40),
       items=st.lists(alphabet, min_size=1, max_size=6))
def test_prefix_matches_are_exactly_the_owners_recordings_that_start_with_an_item(owned, items) -> None:
    """Against the plain definition: the owner's IDs starting with some item; never another's."""
    index = new_index()
    owners: dict[str, str] = {}
    for record_id, owner in owned:
        keep(index, record_id, owner)
        owners[record_id] = owner  # the last write wins, as in the index
    for owner in ("default", "moodle", "greenlight"):
        expected = sorted(r for r, o in owners.items() if o == owner and any(r.startswith(p) for p in items))
        assert found(index, owner, items) == expected


def test_loaded_indexes_are_sorted_like_incremental_ones() -> None:
    import asyncio

    store = MemoryStore()
    ids = ["".join(random.choices(string.ascii_lowercase, k=6)) for _ in range(500)]

    async def fill_and_load() -> RecordingIndex:
        await store.open()
        for record_id in ids:
            await store.put("recordings", record_id, {"record_id": record_id, "integration": "default",
                                                      "state": "published", "metadata": {}})
        loaded = new_index()
        loaded.store = store
        await loaded.load()
        return loaded

    loaded = asyncio.run(fill_and_load())
    prefix = ids[0][:2]
    assert found(loaded, "default", [prefix]) == sorted({r for r in ids if r.startswith(prefix)})


def test_the_bound_is_an_api_error() -> None:
    index = new_index()
    try:
        index.query("default", Query(record_ids=[str(i) for i in range(RECORD_ID_ITEMS_MAX + 1)]))
    except ApiError as exc:
        assert exc.message_key == "invalidParameters"
    else:
        raise AssertionError("no error")
