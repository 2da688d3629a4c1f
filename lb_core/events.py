"""Meeting events as getMeetingEvents answers them: the event model and the query filters.

What is kept of a meeting (its create, joins and end) and how a getMeetingEvents request's filters
are read. Where events are kept is lb_core/event_log.py; how a partition of them is summarised is
lb_core/event_partitions.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from lb_core import bbbxml

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
