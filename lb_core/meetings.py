"""Which server holds which meeting: the routing state, kept durable through the store."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lb_core.store import Store

if TYPE_CHECKING:
    from lb_core.cluster import Cluster

TABLE = "meetings"


@dataclass(frozen=True, slots=True)
class MeetingRecord:
    integration: str
    meeting_id: str
    server: str
    created_at: int  # milliseconds since the epoch, as BBB counts
    name: str = ""
    voice_bridge: str = ""
    moderator_pw: str = ""
    attendee_pw: str = ""
    internal_id: str = ""
    event_id: str = ""
    callbacks: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return meeting_key(self.integration, self.meeting_id)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> MeetingRecord:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def meeting_key(integration: str, meeting_id: str) -> str:
    # Integration names cannot hold a space, so the key is unambiguous.
    return f"{integration} {meeting_id}"


class MeetingRegistry:
    """The index of meetings: by integration and ID, with per-server indexes the balancer and poller need,
    kept in step with the store. Ordering creates is ``meeting_creates.CreateCoordinator``'s job."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._meetings: dict[str, MeetingRecord] = {}
        self._by_server: dict[str, set[str]] = defaultdict(set)
        self._voice_bridges: dict[str, dict[str, str]] = defaultdict(dict)
        self._by_meeting_id: dict[str, set[str]] = defaultdict(set)
        # Several processes on one store (``share``): the store is the truth, read on every meeting call;
        # this index follows it through change notices, and ``on_change`` sends them.
        self.cluster: Cluster | None = None
        self.on_change: Callable[[str], Awaitable[None]] | None = None

    def share(self, cluster: Cluster, on_change: Callable[[str], Awaitable[None]]) -> None:
        self.cluster = cluster
        self.on_change = on_change

    async def load(self) -> None:
        for doc in (await self.store.all(TABLE)).values():
            try:
                self._index(MeetingRecord.from_doc(doc))
            except TypeError:
                continue

    async def reload(self) -> None:
        """Index exactly what the store holds (after change notices may have been missed)."""
        docs = await self.store.all(TABLE)
        for key in [k for k in self._meetings if k not in docs]:
            self._unindex(self._meetings[key])
        for doc in docs.values():
            with contextlib.suppress(TypeError):
                self._index(MeetingRecord.from_doc(doc))

    async def refresh(self, integration: str, meeting_id: str) -> MeetingRecord | None:
        """The meeting as the shared store holds it now (another process may have created or ended it)."""
        return await self.refresh_key(meeting_key(integration, meeting_id))

    async def refresh_key(self, key: str) -> MeetingRecord | None:
        doc = await self.store.get(TABLE, key)
        record = None
        if doc is not None:
            with contextlib.suppress(TypeError):
                record = MeetingRecord.from_doc(doc)
        if record is None:
            if (old := self._meetings.get(key)) is not None:
                self._unindex(old)
        elif self._meetings.get(key) != record:
            self._index(record)
        return record

    def _index(self, record: MeetingRecord) -> None:
        old = self._meetings.get(record.key)
        if old is not None:
            self._unindex(old)
        self._meetings[record.key] = record
        self._by_server[record.server].add(record.key)
        self._by_meeting_id[record.meeting_id].add(record.key)
        if record.voice_bridge:
            self._voice_bridges[record.server][record.voice_bridge] = record.key

    def _unindex(self, record: MeetingRecord) -> None:
        self._meetings.pop(record.key, None)
        on_server = self._by_server.get(record.server)
        if on_server is not None:
            on_server.discard(record.key)
            if not on_server:
                del self._by_server[record.server]
        holders = self._by_meeting_id.get(record.meeting_id)
        if holders is not None:
            holders.discard(record.key)
            if not holders:
                del self._by_meeting_id[record.meeting_id]
        bridges = self._voice_bridges.get(record.server)
        if bridges is not None and record.voice_bridge and bridges.get(record.voice_bridge) == record.key:
            del bridges[record.voice_bridge]
            if not bridges:
                del self._voice_bridges[record.server]

    def by_key(self, key: str) -> MeetingRecord | None:
        return self._meetings.get(key)

    def get(self, integration: str, meeting_id: str) -> MeetingRecord | None:
        return self._meetings.get(meeting_key(integration, meeting_id))

    def on_server(self, server: str) -> list[MeetingRecord]:
        return [self._meetings[k] for k in self._by_server.get(server, ()) if k in self._meetings]

    def by_integration(self, integration: str) -> list[MeetingRecord]:
        return [m for m in self._meetings.values() if m.integration == integration]

    def holders_of(self, meeting_id: str, other_than: str | None = None) -> set[str]:
        """Servers where any integration (but ``other_than``) runs a meeting with this ID (backend IDs must not clash)."""
        return {record.server for k in self._by_meeting_id.get(meeting_id, ())
                if (record := self._meetings[k]).integration != other_than}

    def voice_bridge_in_use(self, server: str, voice_bridge: str) -> bool:
        return voice_bridge in self._voice_bridges.get(server, {})

    def count(self, integration: str | None = None) -> int:
        if integration is None:
            return len(self._meetings)
        return sum(1 for m in self._meetings.values() if m.integration == integration)

    def __len__(self) -> int:
        return len(self._meetings)

    async def save(self, record: MeetingRecord) -> None:
        """Index and store ``record``; if the store fails, the index is as it was (and the error raised)."""
        previous = self._meetings.get(record.key)
        self._index(record)
        try:
            await self.store.put(TABLE, record.key, record.to_doc())
        except BaseException:
            if self._meetings.get(record.key) is record:
                self._unindex(record)
                if previous is not None:
                    self._index(previous)
            raise
        if self.on_change is not None:
            await self.on_change(record.key)

    async def forget(self, record: MeetingRecord) -> bool:
        current = self._meetings.get(record.key)
        if current is None or current.server != record.server:
            return False
        self._unindex(current)
        try:
            await self.store.delete(TABLE, record.key)
        except BaseException:
            if record.key not in self._meetings:
                self._index(current)  # still stored: still routable
            raise
        if self.on_change is not None:
            await self.on_change(record.key)
        return True
