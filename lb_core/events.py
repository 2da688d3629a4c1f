"""Meeting events for getMeetingEvents: every create, join and end, queryable from memory.

Events are appended to the store in batches off the request path; at start the whole log is
read back into an index, so a query never touches the disk.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from lb_core import bbbxml
from lb_core.store import Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 100


@dataclass(slots=True)
class JoinEvent:
    name: str
    role: str
    at: int


@dataclass(slots=True)
class MeetingEvent:
    event_id: str
    integration: str
    meeting_id: str
    name: str
    created_at: int
    server_name: str
    server_url: str
    query: list[tuple[str, str]]
    users: list[JoinEvent] = field(default_factory=list)
    ended_at: int | None = None

    def to_xml_fields(self) -> list[tuple[str, Any]]:
        fields: list[tuple[str, Any]] = [
            ("meetingID", self.meeting_id),
            ("name", self.name),
            ("createdAt", self.created_at),
        ]
        if self.ended_at is not None:
            fields.append(("endedAt", self.ended_at))
        fields.append(("server", [("name", self.server_name), ("url", self.server_url)]))
        fields.append(("users", [("user", [("name", u.name), ("role", u.role), ("createdAt", u.at)])
                                 for u in self.users]))
        fields.append(("query", [(key, value) for key, value in self.query if bbbxml.is_tag_name(key)]))
        return fields


@dataclass(frozen=True, slots=True)
class EventQuery:
    created_from: date | None = None
    created_to: date | None = None
    ended_by: date | None = None
    min_users: int = 1
    limit: int = DEFAULT_LIMIT


class EventQueryError(ValueError):
    """A filter value that is not what getMeetingEvents accepts."""


def parse_query(params: list[tuple[str, str]]) -> EventQuery:
    """Read getMeetingEvents filters; ``createdAt`` given twice is a from-to range."""

    def day(value: str, name: str) -> date:
        try:
            if len(value) != 10:
                raise ValueError
            return date.fromisoformat(value)
        except ValueError:
            raise EventQueryError(f"{name} must be a date as YYYY-MM-DD") from None

    def whole(value: str, name: str) -> int:
        if not value.isdigit() or len(value) > 9:
            raise EventQueryError(f"{name} must be a whole number")
        return int(value)

    created = [day(v, "createdAt") for k, v in params if k == "createdAt"]
    ended = [day(v, "endedAt") for k, v in params if k == "endedAt"]
    users = [whole(v, "users") for k, v in params if k == "users"]
    limits = [whole(v, "limit") for k, v in params if k == "limit"]
    if len(created) > 2 or len(ended) > 1 or len(users) > 1 or len(limits) > 1:
        raise EventQueryError("a filter was given too many times")
    created.sort()
    limit = limits[0] if limits else DEFAULT_LIMIT
    return EventQuery(
        created_from=created[0] if created else None,
        created_to=created[1] if len(created) == 2 else None,
        ended_by=ended[0] if ended else None,
        min_users=users[0] if users else 1,
        limit=max(0, min(limit, MAX_LIMIT)),
    )


def _ms(day: date) -> int:
    return int(datetime.combine(day, time.min, tzinfo=UTC).timestamp() * 1000)


class EventLog:
    """The in-memory index of meeting events, fed by the store at start and by the gateway after."""

    def __init__(self, store: Store, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled  # off: nothing new is recorded (user names stay off the disk)
        self._events: dict[str, MeetingEvent] = {}
        self._by_integration: dict[str, list[MeetingEvent]] = {}
        self.recorded_total = 0

    async def load(self) -> None:
        for doc in await self.store.read_events():
            self._apply(doc)
        for events in self._by_integration.values():
            events.sort(key=lambda e: e.created_at)

    def _apply(self, doc: dict[str, Any]) -> None:
        kind = doc.get("t")
        if kind == "create":
            event = MeetingEvent(
                event_id=doc["id"], integration=doc.get("i", "default"), meeting_id=doc.get("m", ""),
                name=doc.get("n", ""), created_at=int(doc.get("at", 0)), server_name=doc.get("s", ""),
                server_url=doc.get("u", ""), query=[tuple(p) for p in doc.get("q", [])],
            )
            self._events[event.event_id] = event
            self._by_integration.setdefault(event.integration, []).append(event)
            return
        event = self._events.get(doc.get("id", ""))
        if event is None:
            return
        if kind == "join":
            event.users.append(JoinEvent(doc.get("name", ""), doc.get("role", "attendee"), int(doc.get("at", 0))))
        elif kind == "end" and event.ended_at is None:
            event.ended_at = int(doc.get("at", 0))

    def _record(self, doc: dict[str, Any]) -> None:
        self._apply(doc)
        self.store.append_events([doc])
        self.recorded_total += 1

    def created(self, *, integration: str, meeting_id: str, name: str, at: int, server_name: str,
                server_url: str, query: list[tuple[str, str]]) -> str:
        if not self.enabled:
            return ""
        event_id = uuid.uuid4().hex
        self._record({"t": "create", "id": event_id, "i": integration, "m": meeting_id, "n": name, "at": at,
                      "s": server_name, "u": server_url, "q": [list(p) for p in query]})
        return event_id

    def joined(self, event_id: str, name: str, role: str, at: int) -> None:
        if event_id in self._events:
            self._record({"t": "join", "id": event_id, "name": name, "role": role, "at": at})

    def ended(self, event_id: str, at: int) -> None:
        event = self._events.get(event_id)
        if event is not None and event.ended_at is None:
            self._record({"t": "end", "id": event_id, "at": at})

    def get(self, event_id: str) -> MeetingEvent | None:
        return self._events.get(event_id)

    def __len__(self) -> int:
        return len(self._events)

    def query(self, integration: str, q: EventQuery) -> list[MeetingEvent]:
        """Newest first, as the Mconf-LB answered."""
        created_min = _ms(q.created_from) if q.created_from else None
        created_max = _ms(q.created_to + timedelta(days=1)) if q.created_to else None
        ended_max = _ms(q.ended_by + timedelta(days=1)) if q.ended_by else None
        found: list[MeetingEvent] = []
        if q.limit == 0:
            return found
        for event in reversed(self._by_integration.get(integration, [])):
            if created_min is not None and event.created_at < created_min:
                break  # the list is in creation order: nothing older can match
            if created_max is not None and event.created_at >= created_max:
                continue
            if ended_max is not None and (event.ended_at is None or event.ended_at >= ended_max):
                continue
            if len(event.users) < q.min_users:
                continue
            found.append(event)
            if len(found) >= q.limit:
                break
        return found
