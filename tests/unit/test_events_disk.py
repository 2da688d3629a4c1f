"""Meeting events live on disk with an index; memory holds a bounded working set whatever the history."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from datetime import UTC, date, datetime

from lb_core.event_log import INDEX_TABLE, EventLog
from lb_core.events import EventQuery, MeetingEvent
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.store_tinydb import TinyDbStore

DAY = 86_400_000


def live_meeting_events() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is MeetingEvent)


async def open_store(tmp_path) -> TinyDbStore:  # type: ignore[no-untyped-def]
    store = TinyDbStore(str(tmp_path / "lb.json"), event_flush_interval_s=0.01)
    await store.open()
    return store


async def test_memory_stays_bounded_as_meetings_come_and_go(tmp_path):
    """2,000 meetings created, joined and ended: the registry is empty again and the event log holds
    at most its working set (a few partitions), while every meeting can still be queried from disk."""
    store = await open_store(tmp_path)
    registry = MeetingRegistry(store)
    events = EventLog(store)
    events.PARTITION_SIZE = 50
    events.partitions.capacity = 3
    await events.load()
    gc.collect()
    before = live_meeting_events()
    now = int(time.time() * 1000)
    for batch in range(0, 2000, 100):  # a hundred meetings at a time, as concurrent calls would be
        records = []
        for i in range(batch, batch + 100):
            at = now - 2000 + i
            event_id = events.created(integration="default", meeting_id=f"m{i}", name=f"M {i}", at=at,
                                      server_name="bbb1", server_url="http://bbb1", query=[("meetingID", f"m{i}")])
            records.append(MeetingRecord("default", f"m{i}", f"bbb{i % 3}", at, voice_bridge=f"7{i:04d}",
                                         event_id=event_id))
        await asyncio.gather(*(registry.save(r) for r in records))
        for r in records:
            events.joined(r.event_id, f"user {r.meeting_id}", "moderator", r.created_at + 1)
            events.joined(r.event_id, f"guest {r.meeting_id}", "attendee", r.created_at + 2)
        assert all(await asyncio.gather(*(registry.forget(r) for r in records)))
        for r in records:
            events.ended(r.event_id, r.created_at + 3)
    gc.collect()
    assert len(registry) == 0
    assert not registry._meetings and not registry._by_server and not registry._by_meeting_id
    assert not registry._voice_bridges
    assert await store.all("meetings") == {}
    bound = events.partitions.capacity * events.PARTITION_SIZE
    assert events.cached_events() <= bound
    assert live_meeting_events() - before <= bound
    assert len(events) == 2000
    # Older meetings come back from disk, whole, through the same bounded cache.
    found = await events.query("default", EventQuery(limit=100))
    assert [e.meeting_id for e in found] == [f"m{i}" for i in range(1999, 1899, -1)]
    assert all(len(e.users) == 2 and e.ended_at == e.created_at + 3 for e in found)
    oldest = await events.query("default", EventQuery(min_users=2, limit=100))
    assert len(oldest) == 100
    assert events.cached_events() <= bound
    await events.close()
    await store.close()


async def test_a_restart_reads_the_index_not_the_history(tmp_path):
    store = await open_store(tmp_path)
    events = EventLog(store)
    events.PARTITION_SIZE = 10
    await events.load()
    now = int(time.time() * 1000)
    for i in range(95):
        event_id = events.created(integration="moodle" if i % 2 else "default", meeting_id=f"m{i}", name="",
                                  at=now - 1000 + i, server_name="s", server_url="u", query=[])
        events.joined(event_id, "u", "attendee", now)
    await events.close()
    await store.close()
    assert len(list((tmp_path / "lb-events").glob("*.jsonl"))) == 10

    store = await open_store(tmp_path)
    read: list[str] = []
    real_read = store.read_events

    async def counting_read(partition: str):  # type: ignore[no-untyped-def]
        read.append(partition)
        return await real_read(partition)

    store.read_events = counting_read  # type: ignore[method-assign]
    again = EventLog(store)
    again.PARTITION_SIZE = 10
    again.partitions.capacity = 1  # no warming in the background: every read below is a query's
    await again.load()
    assert read == ["00000010"]  # only the partition still being filled
    assert len(again) == 95
    found = await again.query("moodle", EventQuery(limit=3))
    assert [e.meeting_id for e in found] == ["m93", "m91", "m89"]
    assert read == ["00000010", "00000009"]
    await store.close()


async def test_the_writer_applies_the_retention(tmp_path):
    store = await open_store(tmp_path)
    events = EventLog(store, retention_days=90)
    events.PARTITION_SIZE = 5
    await events.load()
    now = int(time.time() * 1000)
    old_ids = [events.created(integration="default", meeting_id=f"old{i}", name="", at=now - 100 * DAY + i,
                              server_name="s", server_url="u", query=[]) for i in range(5)]
    for i in range(6):  # fills a partition with recent meetings and opens the next one
        events.created(integration="default", meeting_id=f"new{i}", name="", at=now - DAY + i,
                       server_name="s", server_url="u", query=[])
    await events.close()
    await store.flush()
    assert not (tmp_path / "lb-events" / "00000001.jsonl").exists()
    assert "00000001" not in await store.all(INDEX_TABLE)
    found = await events.query("default", EventQuery(limit=100, min_users=0))
    assert [e.meeting_id for e in found] == [f"new{i}" for i in reversed(range(6))]
    events.joined(old_ids[0], "late", "attendee", now)  # a meeting past the retention records nothing
    await store.flush()
    assert not (tmp_path / "lb-events" / "00000001.jsonl").exists()
    await store.close()


async def test_queries_over_partitions_match_a_plain_scan(tmp_path):
    """Random meetings (not in creation order) across many partitions, a tiny cache: same answers as a scan."""
    rng = random.Random(7)
    store = await open_store(tmp_path)
    events = EventLog(store, retention_days=0)
    events.PARTITION_SIZE = 7
    events.partitions.capacity = 2
    await events.load()
    base = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
    plain: list[list] = []  # integration, meeting ID, created, users, ended, event ID
    for i in range(150):
        integration = rng.choice(["a", "b", "c"])
        at = base + rng.randrange(20) * DAY + rng.randrange(DAY)
        event_id = events.created(integration=integration, meeting_id=f"m{i}", name="", at=at, server_name="s",
                                  server_url="u", query=[])
        users = rng.randrange(4)
        for u in range(users):
            events.joined(event_id, f"u{u}", "attendee", at + u)
        ended = at + rng.randrange(3 * DAY) if rng.random() < 0.7 else None
        if ended is not None:
            events.ended(event_id, ended)
        plain.append([integration, f"m{i}", at, users, ended, event_id])

    def expected(integration: str, q: EventQuery) -> list[str]:
        def ms(day: date) -> int:
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)

        rows = [r for r in plain if r[0] == integration and r[3] >= q.min_users
                and (q.created_from is None or r[2] >= ms(q.created_from))
                and (q.created_to is None or r[2] < ms(q.created_to) + DAY)
                and (q.ended_by is None or (r[4] is not None and r[4] < ms(q.ended_by) + DAY))]
        rows.sort(key=lambda r: r[2], reverse=True)
        return [r[1] for r in rows[: q.limit]]

    async def compare(times: int) -> None:
        for _ in range(times):
            first = date(2024, 3, 1 + rng.randrange(20))
            q = EventQuery(
                created_from=first if rng.random() < 0.5 else None,
                created_to=date(2024, 3, min(28, first.day + rng.randrange(5))) if rng.random() < 0.3 else None,
                ended_by=date(2024, 3, 1 + rng.randrange(25)) if rng.random() < 0.3 else None,
                min_users=rng.randrange(6), limit=rng.choice([1, 5, 20, 100]))
            integration = rng.choice(["a", "b", "c"])
            assert [e.meeting_id for e in await events.query(integration, q)] == expected(integration, q), q
            assert events.cached_events() <= 2 * 7

    await compare(60)
    # Joins and ends for meetings whose partitions left memory: what was learnt about them is stale now.
    for row in rng.sample(plain, 40):
        for _ in range(rng.randrange(1, 4)):
            events.joined(row[5], f"late{row[3]}", "attendee", row[2] + 100 + row[3])
            row[3] += 1
        if row[4] is None and rng.random() < 0.5:
            row[4] = row[2] + rng.randrange(DAY)
            events.ended(row[5], row[4])
    for integration in "abc":
        for min_users in range(6, -1, -1):  # the strictest first: before any read refreshes a summary
            q = EventQuery(min_users=min_users, limit=100)
            assert [e.meeting_id for e in await events.query(integration, q)] == expected(integration, q), q
    await compare(60)
    await events.close()
    await store.close()


async def test_event_files_of_earlier_versions_are_converted(tmp_path):
    folder = tmp_path / "lb-events"
    folder.mkdir()
    at = int(time.time() * 1000) - DAY
    old = {"events": {"1": {"t": "create", "id": "abc", "i": "default", "m": "legacy", "n": "Old", "at": at,
                            "s": "bbb1", "u": "http://bbb1", "q": [["meetingID", "legacy"]]},
                      "2": {"t": "join", "id": "abc", "name": "Ann", "role": "moderator", "at": at + 5}}}
    (folder / "events-000001.json").write_text(json.dumps(old))
    store = await open_store(tmp_path)
    events = EventLog(store)
    await events.load()
    assert not (folder / "events-000001.json").exists()
    found = await events.query("default", EventQuery())
    assert [(e.meeting_id, [u.name for u in e.users]) for e in found] == [("legacy", ["Ann"])]
    new_id = events.created(integration="default", meeting_id="new", name="", at=at + 10, server_name="s",
                            server_url="u", query=[])
    assert new_id.startswith("00000001.")
    await events.close()
    await store.close()


async def test_joins_recorded_while_a_partition_is_read_count_once(tmp_path):
    store = await open_store(tmp_path)
    events = EventLog(store)
    events.PARTITION_SIZE = 1
    events.partitions.capacity = 1
    await events.load()
    now = int(time.time() * 1000)
    first = events.created(integration="default", meeting_id="old", name="", at=now - 10, server_name="s",
                           server_url="u", query=[])
    events.joined(first, "Bob", "attendee", now)
    events.joined(first, "Bob", "attendee", now)  # twice in one millisecond: two joins
    events.created(integration="default", meeting_id="new", name="", at=now, server_name="s", server_url="u",
                   query=[])  # "old" leaves memory
    await store.flush()
    assert events.get(first) is None
    real_read = store.read_events

    async def read_with_joins_around(partition: str):  # type: ignore[no-untyped-def]
        events.joined(first, "Before", "attendee", now + 1)  # queued: read back and also seen arriving
        docs = await real_read(partition)
        events.joined(first, "After", "attendee", now + 2)  # only seen arriving
        return docs

    store.read_events = read_with_joins_around  # type: ignore[method-assign]
    found = await events.query("default", EventQuery(created_from=None, limit=100))
    old = next(e for e in found if e.meeting_id == "old")
    assert [u.name for u in old.users] == ["Bob", "Bob", "Before", "After"]
    await events.close()
    await store.close()


async def test_event_batches_are_encoded_off_the_event_loop(tmp_path, monkeypatch):
    """A batch's JSON grows with the traffic: encoding it on the loop stalled every call (join p99 spikes)."""
    import threading

    from lb_core import store_events

    encoded_on: set[str] = set()
    real = store_events.json_line

    def watched(doc):  # type: ignore[no-untyped-def]
        encoded_on.add(threading.current_thread().name)
        return real(doc)

    monkeypatch.setattr(store_events, "json_line", watched)
    store = await open_store(tmp_path)
    try:
        store.append_events([{"p": "00000001", "t": "create", "id": str(i)} for i in range(50)])
        await store.flush()
        assert [d["id"] for d in await store.read_events("00000001")] == [str(i) for i in range(50)]
    finally:
        await store.close()
    assert encoded_on and threading.main_thread().name not in encoded_on
