"""The order of creates: two creates of one meeting, or of one backend meetingID on one server, never race.

Three rules, each for a race the handler in ``handlers/create.py`` would otherwise lose:

- two concurrent creates of one new meeting (same integration and meetingID) end on one server: the
  first does the work (``begin``/``end``), the others wait for its outcome (``in_progress``);
- creates of one backend meetingID on one server, by any integration, run one after the other
  (``backend_lock``), so two integrations' meetings never merge into one on a BBB server;
- with several processes on one store, one creates a given meeting at a time (``guard``: a Redis lock).

The meetings themselves are ``meetings.MeetingRegistry``'s; this only counts creates not recorded yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lb_core.meetings import MeetingRecord, MeetingRegistry


@dataclass(slots=True)
class _SharedLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class CreateCoordinator:
    """Creates under way, by meeting key, and the per-(server, backend meetingID) locks."""

    def __init__(self, meetings: MeetingRegistry) -> None:
        self.meetings = meetings
        self._creating: dict[str, asyncio.Future[MeetingRecord | None]] = {}
        # (server, backend meetingID) -> [lock, holders]: the entry lives only while someone holds or waits.
        self._backend_locks: dict[tuple[str, str], _SharedLock] = {}

    def guard(self, key: str, wait_s: float) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while this meeting is created: across processes when shared (a Redis lock), else nothing
        (one process orders its creates with ``begin``)."""
        cluster = self.meetings.cluster
        if cluster is None:
            return contextlib.nullcontext()
        return cluster.create_lock(key, wait_s)

    def in_progress(self, key: str) -> asyncio.Future[MeetingRecord | None] | None:
        """The outcome of a create of this meeting under way here, to wait for."""
        return self._creating.get(key)

    def creating(self, integration: str) -> int:
        """Creates under way for the integration that are not recorded yet (so none is counted twice)."""
        prefix = integration + " "
        return sum(1 for key in self._creating if key.startswith(prefix) and self.meetings.by_key(key) is None)

    def begin(self, key: str) -> asyncio.Future[MeetingRecord | None]:
        future: asyncio.Future[MeetingRecord | None] = asyncio.get_running_loop().create_future()
        self._creating[key] = future
        return future

    def end(self, key: str, record: MeetingRecord | None) -> None:
        future = self._creating.pop(key, None)
        if future is not None and not future.done():
            future.set_result(record)

    @contextlib.asynccontextmanager
    async def backend_lock(self, server: str, meeting_id: str) -> AsyncIterator[None]:
        """Hold while creating ``meeting_id`` on ``server``, so two integrations' creates never merge there."""
        key = (server, meeting_id)
        entry = self._backend_locks.get(key)
        if entry is None:
            entry = self._backend_locks[key] = _SharedLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._backend_locks[key]
