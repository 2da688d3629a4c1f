"""A partition of meeting events, parsed (what the event log caches), and its summary in the index.

A partition holds the meetings created while it was current, with their joins and ends. Its summary
(creation-time range, meetings per integration, and, once read, most users and first end) lets a
query skip it without reading it from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lb_core.events import JoinEvent, MeetingEvent


class Partition:
    """The meetings of one partition, parsed: what the LRU holds."""

    __slots__ = ("name", "events", "by_integration", "unsorted")

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: dict[str, MeetingEvent] = {}
        self.by_integration: dict[str, list[MeetingEvent]] = {}
        self.unsorted: set[str] = set()

    def apply(self, doc: dict[str, Any]) -> MeetingEvent | None:
        """Apply one event; a create or an end applied twice changes nothing (joins are told apart by ``j``)."""
        kind = doc.get("t")
        event_id = str(doc.get("id", ""))
        if kind == "create":
            if event_id in self.events:
                return None
            event = MeetingEvent(
                event_id=event_id, integration=str(doc.get("i", "default")), meeting_id=str(doc.get("m", "")),
                name=str(doc.get("n", "")), created_at=int(doc.get("at", 0)), server_name=str(doc.get("s", "")),
                server_url=str(doc.get("u", "")), query=[(str(p[0]), str(p[1])) for p in doc.get("q", [])],
            )
            self.events[event_id] = event
            bucket = self.by_integration.setdefault(event.integration, [])
            if bucket and bucket[-1].created_at > event.created_at:
                self.unsorted.add(event.integration)
            bucket.append(event)
            return event
        event = self.events.get(event_id)
        if event is None:
            return None
        if kind == "join":
            event.users.append(JoinEvent(str(doc.get("name", "")), str(doc.get("role", "attendee")),
                                         int(doc.get("at", 0))))
        elif kind == "end" and event.ended_at is None:
            event.ended_at = int(doc.get("at", 0))
        return event

    def newest_first(self, integration: str) -> list[MeetingEvent]:
        bucket = self.by_integration.get(integration, [])
        if integration in self.unsorted:
            bucket.sort(key=lambda e: e.created_at)
            self.unsorted.discard(integration)
        return bucket

    def __len__(self) -> int:
        return len(self.events)


@dataclass(slots=True)
class PartitionMeta:
    """What the index keeps of a partition: enough to skip it without reading it."""

    first_at: int = 0
    last_at: int = 0
    meetings: int = 0
    integrations: dict[str, int] = field(default_factory=dict)
    # Known once the partition was read and while every change to it was seen (not stored): lets a
    # query that asks for many users or an early end skip it without reading it again.
    exact: bool = False
    most_users: int = 0
    first_end: int | None = None

    def add(self, event: MeetingEvent) -> None:
        self.first_at = event.created_at if not self.meetings else min(self.first_at, event.created_at)
        self.last_at = max(self.last_at, event.created_at)
        self.meetings += 1
        self.integrations[event.integration] = self.integrations.get(event.integration, 0) + 1

    def saw(self, event: MeetingEvent) -> None:
        """A change to a meeting of a partition in memory: the summary stays exact."""
        self.most_users = max(self.most_users, len(event.users))
        if event.ended_at is not None and (self.first_end is None or event.ended_at < self.first_end):
            self.first_end = event.ended_at

    def summarise(self, partition: Partition) -> None:
        self.exact, self.most_users, self.first_end = True, 0, None
        for event in partition.events.values():
            self.saw(event)

    def cannot_match(self, min_users: int, ended_before: int | None) -> bool:
        if not self.exact:
            return False
        if self.most_users < min_users:
            return True
        return ended_before is not None and (self.first_end is None or self.first_end >= ended_before)

    def to_doc(self) -> dict[str, Any]:
        return {"first": self.first_at, "last": self.last_at, "n": self.meetings, "i": dict(self.integrations)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> PartitionMeta:
        return cls(int(doc.get("first", 0)), int(doc.get("last", 0)), int(doc.get("n", 0)),
                   {str(k): int(v) for k, v in dict(doc.get("i", {})).items()})

    @classmethod
    def of(cls, partition: Partition) -> PartitionMeta:
        meta = cls()
        for event in partition.events.values():
            meta.add(event)
        return meta


def partition_name(number: int) -> str:
    return f"{number:08d}"
