"""Meeting events for getMeetingEvents: every create, join and end, kept on disk with an index.

Events are appended to the store in batches off the request path, in partitions of at most
``PARTITION_SIZE`` meetings (a meeting's joins and end go to the partition of its create; the
event ID names it). Memory holds only the index (per partition: creation-time range and meetings
per integration) and a bounded LRU of parsed partitions, so it does not grow with history.
Partitions older than the retention are deleted by the writer. The event model and query filters
are in lb_core/events.py, a parsed partition and its index entry in lb_core/event_partitions.py.
"""

from __future__ import annotations

import asyncio
import logging
import time as clock
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from lb_core.event_partitions import Partition, PartitionMeta, partition_name
from lb_core.events import EventQuery, MeetingEvent
from lb_core.store import Store

log = logging.getLogger("bbb_lb.events")

INDEX_TABLE = "event_index"
DAY_MS = 86_400_000


def _ms(day: date) -> int:
    return int(datetime.combine(day, time.min, tzinfo=UTC).timestamp() * 1000)


class PartitionCache:
    """Parsed partitions by name, at most ``capacity`` (least recently used go first, never ``pinned``).

    Concurrent reads of one partition share one store read; events recorded while it is read are
    kept and applied once it arrives (a join read from the file is not applied twice).
    """

    def __init__(self, store: Store, capacity: int) -> None:
        self.store = store
        self.capacity = capacity
        self.pinned = ""  # the current partition: it takes new meetings, so it stays
        self._parsed: OrderedDict[str, Partition] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Partition]] = {}
        self._arrived: dict[str, list[dict[str, Any]]] = {}

    def get(self, name: str) -> Partition | None:
        return self._parsed.get(name)

    def add(self, partition: Partition) -> None:
        self._parsed[partition.name] = partition
        self._evict()

    def pop(self, name: str) -> None:
        self._parsed.pop(name, None)

    def clear(self) -> None:
        self._parsed.clear()

    def arrived(self, name: str, doc: dict[str, Any]) -> None:
        """An event of a partition not in memory: kept if that partition is being read right now."""
        if name in self._loading:
            self._arrived.setdefault(name, []).append(doc)

    def __iter__(self) -> Iterator[Partition]:
        return iter(self._parsed.values())

    async def load(self, name: str, keep: Callable[[Partition], bool]) -> Partition:
        """The partition, read from the store if need be; cached only if ``keep`` says so."""
        cached = self._parsed.get(name)
        if cached is not None:
            self._parsed.move_to_end(name)
            return cached
        loading = self._loading.get(name)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Partition] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            partition = Partition(name)
            joins_read: set[str] = set()
            for doc in await self.store.read_events(name):
                partition.apply(doc)
                if doc.get("t") == "join" and doc.get("j"):
                    joins_read.add(str(doc["j"]))
            for doc in self._arrived.pop(name, ()):  # recorded while the partition was read: maybe read too
                if doc.get("t") != "join" or str(doc.get("j")) not in joins_read:
                    partition.apply(doc)
            if keep(partition):
                self.add(partition)
            future.set_result(partition)
            return partition
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, get it too
            raise
        finally:
            self._loading.pop(name, None)
            self._arrived.pop(name, None)

    def _evict(self) -> None:
        while len(self._parsed) > max(1, self.capacity):
            oldest = next(iter(self._parsed))
            if oldest == self.pinned:
                self._parsed.move_to_end(oldest)
                continue
            del self._parsed[oldest]


class EventLog:
    """Records meeting events and answers getMeetingEvents from the partition index (the partitions
    themselves come from a ``PartitionCache``)."""

    PARTITION_SIZE = 1000  # meetings per partition: the unit read from disk and cached
    CACHED_PARTITIONS = 16  # the working set: at most this many parsed partitions in memory

    def __init__(self, store: Store, enabled: bool = True, retention_days: float = 90) -> None:
        self.store = store
        self.enabled = enabled  # off: nothing new is recorded (user names stay off the disk)
        self.retention_days = retention_days
        self._index: dict[str, PartitionMeta] = {}  # sealed and current, by name (ascending numbers)
        self._current = partition_name(1)
        self.partitions = PartitionCache(store, self.CACHED_PARTITIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._retention_checked = 0.0
        self.recorded_total = 0
        self._open_partition(partition_name(1))  # an empty store; ``load`` reads what the store holds

    # --- start and stop ---------------------------------------------------------------------

    async def load(self) -> None:
        """Read the index; rebuild the entries a crash (or an older version) left out."""
        self._index.clear()
        self.partitions.clear()
        stored = await self.store.all(INDEX_TABLE)
        names = await self.store.event_partitions()
        for gone in set(stored) - set(names):
            await self.store.delete(INDEX_TABLE, gone)
        if not names:
            self._open_partition(partition_name(1))
            return
        *sealed, current = names
        for name in sealed:
            if name in stored:
                self._index[name] = PartitionMeta.from_doc(stored[name])
            else:
                meta = PartitionMeta.of(await self._read(name))
                self._index[name] = meta
                await self.store.put(INDEX_TABLE, name, meta.to_doc())
        partition = await self._read(current)
        self._index[current] = PartitionMeta.of(partition)
        self._index[current].summarise(partition)
        self._current = self.partitions.pinned = current
        self.partitions.add(partition)
        if len(partition) >= self.PARTITION_SIZE:
            self._seal()
        await self._apply_retention()
        await self._warm()

    async def _warm(self) -> None:
        """Read the newest partitions (a bounded start-up cost): the first queries ask for recent meetings."""
        newest = sorted(self._index, key=lambda name: self._index[name].last_at, reverse=True)
        for name in newest[: self.partitions.capacity // 2]:
            await self._partition(name)

    async def close(self) -> None:
        """Wait for index and retention writes under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- recording --------------------------------------------------------------------------

    def _open_partition(self, name: str) -> None:
        self._current = self.partitions.pinned = name
        self._index[name] = PartitionMeta(exact=True)
        self.partitions.add(Partition(name))

    def _seal(self) -> None:
        """The current partition is full: its index entry is stored, a new one takes the creates."""
        sealed, meta = self._current, self._index[self._current]
        self._background(self.store.put(INDEX_TABLE, sealed, meta.to_doc()))
        self._open_partition(partition_name(int(sealed) + 1))
        self._retention_checked = 0.0  # the writer applies the retention when it opens a partition

    def _background(self, work: Any) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:
                log.error("meeting events: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, partition: str, doc: dict[str, Any]) -> None:
        doc["p"] = partition
        cached = self.partitions.get(partition)
        meta = self._index[partition]
        if cached is not None:
            event = cached.apply(doc)
            if event is not None:
                if doc["t"] == "create":
                    meta.add(event)
                meta.saw(event)
        else:
            meta.exact = False  # changed while not in memory: read it again before skipping it
            self.partitions.arrived(partition, doc)
        self.store.append_events([doc])
        self.recorded_total += 1

    def created(self, *, integration: str, meeting_id: str, name: str, at: int, server_name: str,
                server_url: str, query: list[tuple[str, str]]) -> str:
        if not self.enabled:
            return ""
        if self._index[self._current].meetings >= self.PARTITION_SIZE:
            self._seal()
        if clock.monotonic() - self._retention_checked > 3600 or not self._retention_checked:
            self._retention_checked = clock.monotonic()
            self._background(self._apply_retention())
        event_id = f"{self._current}.{uuid.uuid4().hex}"
        self._record(self._current, {"t": "create", "id": event_id, "i": integration, "m": meeting_id, "n": name,
                                     "at": at, "s": server_name, "u": server_url, "q": [list(p) for p in query]})
        return event_id

    def _partition_of(self, event_id: str) -> str | None:
        """The partition an event ID names (IDs of older versions name none: their joins are not kept)."""
        partition, dot, _ = event_id.partition(".")
        return partition if dot and partition in self._index else None

    def joined(self, event_id: str, name: str, role: str, at: int) -> None:
        partition = self._partition_of(event_id)
        if partition is not None:
            self._record(partition, {"t": "join", "id": event_id, "j": uuid.uuid4().hex[:12], "name": name,
                                     "role": role, "at": at})

    def ended(self, event_id: str, at: int) -> None:
        partition = self._partition_of(event_id)
        if partition is None:
            return
        cached = self.partitions.get(partition)
        event = cached.events.get(event_id) if cached is not None else None
        if cached is None or (event is not None and event.ended_at is None):
            self._record(partition, {"t": "end", "id": event_id, "at": at})

    # --- retention --------------------------------------------------------------------------

    async def _apply_retention(self) -> None:
        """Partitions whose newest meeting is older than the retention are deleted (never the current one)."""
        if self.retention_days <= 0:
            return
        cutoff = int(clock.time() * 1000 - self.retention_days * DAY_MS)
        old = [name for name, meta in self._index.items() if name != self._current and meta.last_at < cutoff]
        if not old:
            return
        for name in old:
            self._index.pop(name, None)
            self.partitions.pop(name)
        await self.store.drop_event_partitions(old)
        for name in old:
            await self.store.delete(INDEX_TABLE, name)
        log.info("meeting events: %d partitions older than %g days deleted", len(old), self.retention_days)

    # --- reading ----------------------------------------------------------------------------

    async def _read(self, name: str) -> Partition:
        partition = Partition(name)
        for doc in await self.store.read_events(name):
            partition.apply(doc)
        return partition

    async def _partition(self, name: str) -> Partition:
        def keep(partition: Partition) -> bool:
            meta = self._index.get(name)  # None: deleted by the retention while it was read
            if meta is not None:
                meta.summarise(partition)
            return meta is not None

        return await self.partitions.load(name, keep)

    def get(self, event_id: str) -> MeetingEvent | None:
        """The event if its partition is in memory (for tests and the dashboard)."""
        partition = self._partition_of(event_id)
        cached = self.partitions.get(partition) if partition is not None else None
        return cached.events.get(event_id) if cached is not None else None

    def cached_events(self) -> int:
        """Meetings held in memory: bounded by the cache capacity times ``PARTITION_SIZE``."""
        return sum(len(p) for p in self.partitions)

    def __len__(self) -> int:
        return sum(meta.meetings for meta in self._index.values())

    async def query(self, integration: str, q: EventQuery) -> list[MeetingEvent]:
        """Newest first, as the Mconf-LB answered; reads only partitions that can hold an answer."""
        created_min = _ms(q.created_from) if q.created_from else None
        created_max = _ms(q.created_to + timedelta(days=1)) if q.created_to else None
        ended_max = _ms(q.ended_by + timedelta(days=1)) if q.ended_by else None
        if q.limit == 0:
            return []
        candidates = [
            (name, meta) for name, meta in self._index.items()
            if meta.integrations.get(integration)
            and (created_min is None or meta.last_at >= created_min)
            and (created_max is None or meta.first_at < created_max)
            and not meta.cannot_match(q.min_users, ended_max)
        ]
        candidates.sort(key=lambda c: c[1].last_at, reverse=True)
        found: list[MeetingEvent] = []
        for name, meta in candidates:
            if len(found) >= q.limit and meta.last_at < found[-1].created_at:
                break  # sorted by newest meeting: no partition left holds anything newer
            partition = await self._partition(name)
            taken = 0
            for event in reversed(partition.newest_first(integration)):
                if created_min is not None and event.created_at < created_min:
                    break  # the list is in creation order: nothing older can match
                if created_max is not None and event.created_at >= created_max:
                    continue
                if ended_max is not None and (event.ended_at is None or event.ended_at >= ended_max):
                    continue
                if len(event.users) < q.min_users:
                    continue
                found.append(event)
                taken += 1
                if taken >= q.limit:
                    break  # the rest of this partition is older than these
            found.sort(key=lambda e: e.created_at, reverse=True)
            del found[q.limit:]
        return found
