from datetime import UTC, date, datetime

import pytest

from lb_core.event_log import EventLog
from lb_core.events import EventQuery, EventQueryError, parse_query
from lb_core.store_tinydb import TinyDbStore


def ms(day: str, hour: int = 12) -> int:
    return int(datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
async def log(tmp_path):
    store = TinyDbStore(str(tmp_path / "lb.json"), event_flush_interval_s=0.01)
    await store.open()
    events = EventLog(store, retention_days=0)
    await events.load()
    yield events
    await store.close()


def add(log, meeting_id, day, users=1, ended=None, integration="default", hour=12):  # type: ignore[no-untyped-def]
    event_id = log.created(integration=integration, meeting_id=meeting_id, name=meeting_id, at=ms(day, hour),
                           server_name="bbb1", server_url="http://bbb1", query=[("meetingID", meeting_id)])
    for i in range(users):
        log.joined(event_id, f"user {i}", "attendee", ms(day, hour) + i)
    if ended:
        log.ended(event_id, ms(ended, 23))
    return event_id


async def test_filters_and_order(log):
    add(log, "a", "2024-01-09")
    add(log, "b", "2024-01-10", users=3, ended="2024-01-10")
    add(log, "c", "2024-01-20", users=2, ended="2024-01-21")
    add(log, "d", "2024-01-21", users=0)
    add(log, "other", "2024-01-15", integration="moodle")

    async def ids(**kw):  # type: ignore[no-untyped-def]
        return [e.meeting_id for e in await log.query("default", EventQuery(**kw))]

    assert await ids() == ["c", "b", "a"]
    assert await ids(min_users=0) == ["d", "c", "b", "a"]
    assert await ids(created_from=date(2024, 1, 10)) == ["c", "b"]
    assert await ids(created_from=date(2024, 1, 10), created_to=date(2024, 1, 20)) == ["c", "b"]
    assert await ids(created_from=date(2024, 1, 10), created_to=date(2024, 1, 10)) == ["b"]
    assert await ids(ended_by=date(2024, 1, 10)) == ["b"]
    assert await ids(ended_by=date(2024, 1, 21)) == ["c", "b"]
    assert await ids(min_users=3) == ["b"]
    assert await ids(limit=1) == ["c"]
    assert [e.meeting_id for e in await log.query("moodle", EventQuery())] == ["other"]


async def test_events_are_reloaded_from_the_store(tmp_path):
    store = TinyDbStore(str(tmp_path / "lb.json"), event_flush_interval_s=0.01)
    await store.open()
    log = EventLog(store, retention_days=0)  # the dates are old: keep them
    log.PARTITION_SIZE = 3  # several partition files
    await log.load()
    for i in range(10):
        add(log, f"m{i}", "2024-02-01", users=2, ended="2024-02-02", hour=i)
    await log.close()
    await store.close()
    assert len(list((tmp_path / "lb-events").glob("*.jsonl"))) >= 4
    store = TinyDbStore(str(tmp_path / "lb.json"))
    await store.open()
    again = EventLog(store, retention_days=0)
    await again.load()
    again.partitions.capacity = 2
    found = await again.query("default", EventQuery(limit=100))
    assert [e.meeting_id for e in found] == [f"m{i}" for i in reversed(range(10))]
    assert all(len(e.users) == 2 and e.ended_at for e in found)
    await store.close()


def test_parse_query():
    q = parse_query([("createdAt", "2014-01-20"), ("createdAt", "2014-01-10"), ("users", "2"), ("limit", "500")])
    assert q == EventQuery(date(2014, 1, 10), date(2014, 1, 20), None, 2, 100)
    assert parse_query([]) == EventQuery()
    for bad in ([("createdAt", "2014-1-10")], [("users", "x")], [("limit", "-3")], [("endedAt", "a"), ],
                [("createdAt", "2014-01-01")] * 3, [("endedAt", "2014-02-30")]):
        with pytest.raises(EventQueryError):
            parse_query(bad)


def test_query_tags_leave_out_unsafe_names():
    from lb_core import bbbxml
    from lb_core.events import MeetingEvent
    event = MeetingEvent("id", "default", "m", "n & <b>", 1, "s", "u", [("meetingID", "m"), ("1bad", "x"),
                                                                          ("a b", "y"), ("welcome", "<br>")])
    xml = bbbxml.success([("events", [("event", event.to_xml_fields())])])
    root = bbbxml.parse(xml)
    assert root.findtext("events/event/name") == "n & <b>"
    assert [c.tag for c in root.find("events/event/query")] == ["meetingID", "welcome"]
    assert root.findtext("events/event/query/welcome") == "<br>"
