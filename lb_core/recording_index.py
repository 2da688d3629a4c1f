"""The recordings index: every recording the LB knows, kept in the store, so recordings outlive their servers.

Fed by the sync (each live server's getRecordings, ``recording_sync``) and by imports of shipped archives
(``recording_archive``). The index is the truth: a change made through the LB (publish, delete, update)
is kept as ``pending`` until the origin server has taken it, and a sync never overwrites it.

Lookups never scan: recordings are held in memory by recordID, by (integration, meetingID) and by
integration, so a getRecordings with a meetingID filter costs what it returns, not what is indexed. A
``recordID`` item is a prefix, as in bbb-web ("only the first characters"): each integration keeps its
recordIDs sorted, so an item costs a bisection plus its matches, and never reaches another's recordings.
Works on any ``Store`` (TinyDB, memory, Redis). Several processes on one Redis each hold these lookups:
every write is followed by a change notice (``on_change``, the cluster's channel), on which each process
reads that one document again (``refresh``), so a change made through any process is seen by all at once.
What a document holds, and how it is read from and written as BBB's XML, is ``recording_docs``.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from lxml import etree

from lb_core.lru import LruCache
from lb_core.pool import Pool
from lb_core.recording_docs import STATES, Query, check_record_id_items, recording_from_xml
from lb_core.store import Store

log = logging.getLogger("bbb_lb.recordings")

TABLE = "recordings"
INTERNAL_IDS_MAX = 50_000
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


class RecordingIndex:
    """recordID -> document, with per-integration and per-meeting keys; every change written to the store."""

    def __init__(self, store: Store, pool: Pool, retention_days: float = 30.0) -> None:
        self.store = store
        self.pool = pool
        self.retention_days = retention_days
        self._docs: dict[str, dict[str, Any]] = {}
        self._by_meeting: dict[tuple[str, str], set[str]] = {}
        self._by_integration: dict[str, set[str]] = {}
        self._sorted_ids: dict[str, list[str]] = {}  # integration -> its recordIDs, sorted: prefix lookups
        self._bulk = False  # while loading: appended, sorted once at the end
        self._counts: dict[str, int] = dict.fromkeys(STATES, 0)  # by state, kept as documents change
        # internalMeetingID -> (server, integration), learned from creates: a recording's origin before any sync.
        self._created: LruCache[str, tuple[str, str]] = LruCache(INTERNAL_IDS_MAX)
        self.last_imports: list[dict[str, Any]] = []  # newest last, bounded: the dashboard's "last imports"
        # Several processes on one Redis: told after each write, so every process reads the document again.
        self.on_change: Callable[[str], Awaitable[None]] | None = None

    async def load(self) -> None:
        self._bulk = True
        try:
            for record_id, doc in (await self.store.all(TABLE)).items():
                doc.setdefault("record_id", record_id)
                self._keep(doc)
        finally:
            self._bulk = False
            for ids in self._sorted_ids.values():
                ids.sort()

    # --- keys -------------------------------------------------------------------------------------

    def _keep(self, doc: dict[str, Any]) -> None:
        record_id = doc["record_id"]
        owner = doc.get("integration", "default")
        old = self._docs.get(record_id)
        same_owner = old is not None and old.get("integration", "default") == owner
        if old is not None:
            self._unkeep(old, keep_sorted=same_owner)
        self._docs[record_id] = doc
        state = doc.get("state", "processed")
        self._counts[state] = self._counts.get(state, 0) + 1
        self._by_meeting.setdefault((owner, doc.get("meeting_id", "")), set()).add(record_id)
        self._by_integration.setdefault(owner, set()).add(record_id)
        if not same_owner:
            ids = self._sorted_ids.setdefault(owner, [])
            if self._bulk:
                ids.append(record_id)
            else:
                bisect.insort(ids, record_id)

    def _unkeep(self, doc: dict[str, Any], keep_sorted: bool = False) -> None:
        owner, record_id = doc.get("integration", "default"), doc["record_id"]
        if not keep_sorted:
            ids_sorted = self._sorted_ids.get(owner)
            if ids_sorted:
                at = bisect.bisect_left(ids_sorted, record_id)
                if at < len(ids_sorted) and ids_sorted[at] == record_id:
                    del ids_sorted[at]
        state = doc.get("state", "processed")
        self._counts[state] = self._counts.get(state, 0) - 1
        key = (owner, doc.get("meeting_id", ""))
        ids = self._by_meeting.get(key)
        if ids is not None:
            ids.discard(record_id)
            if not ids:
                del self._by_meeting[key]
        ids = self._by_integration.get(owner)
        if ids is not None:
            ids.discard(record_id)

    async def reload(self) -> None:
        """Read the whole table again (change notices were missed: Redis was away)."""
        self._docs.clear()
        self._by_meeting.clear()
        self._by_integration.clear()
        self._sorted_ids.clear()
        self._counts = dict.fromkeys(STATES, 0)
        await self.load()

    async def refresh(self, record_id: str) -> None:
        """Another process (or this one) changed this recording: take the stored document."""
        doc = await self.store.get(TABLE, record_id)
        if doc is None:
            old = self._docs.pop(record_id, None)
            if old is not None:
                self._unkeep(old)
            return
        doc.setdefault("record_id", record_id)
        self._keep(doc)

    async def save(self, doc: dict[str, Any]) -> None:
        doc["updated_at"] = now_ms()
        await self.store.put(TABLE, doc["record_id"], doc)
        self._keep(doc)
        await self._changed(doc["record_id"])

    async def drop(self, record_id: str) -> None:
        doc = self._docs.pop(record_id, None)
        if doc is not None:
            self._unkeep(doc)
            await self.store.delete(TABLE, record_id)
            await self._changed(record_id)

    async def _changed(self, record_id: str) -> None:
        if self.on_change is not None:
            await self.on_change(record_id)

    # --- reads --------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict[str, Any] | None:
        return self._docs.get(record_id)

    def owned(self, record_id: str, owner: str) -> dict[str, Any] | None:
        doc = self._docs.get(record_id)
        return doc if doc is not None and doc.get("integration") == owner else None

    def with_prefix(self, owner: str, prefix: str) -> Iterator[str]:
        """``owner``'s recordIDs starting with ``prefix`` (the ID itself included), in order: a bisection, then
        only the matches are walked."""
        ids = self._sorted_ids.get(owner)
        if not ids or not prefix:
            return
        at = bisect.bisect_left(ids, prefix)
        while at < len(ids) and ids[at].startswith(prefix):
            yield ids[at]
            at += 1

    def knows_prefix(self, owner: str, prefix: str) -> bool:
        return next(self.with_prefix(owner, prefix), None) is not None

    def __len__(self) -> int:
        return len(self._docs)

    def documents(self) -> list[dict[str, Any]]:
        return list(self._docs.values())

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def query(self, owner: str, query: Query) -> tuple[list[dict[str, Any]], int]:
        """``owner``'s recordings matching every filter, newest first, paged; and how many matched."""
        if query.record_ids:
            check_record_id_items(query.record_ids)
            candidates: Iterable[str] = dict.fromkeys(
                r for prefix in query.record_ids for r in self.with_prefix(owner, prefix))
        elif query.meeting_ids:
            candidates = {r for m in query.meeting_ids for r in self._by_meeting.get((owner, m), ())}
        else:
            candidates = self._by_integration.get(owner, ())
        states, meta = query.states, query.meta
        matched = []
        for record_id in candidates:
            doc = self._docs.get(record_id)
            if doc is None or doc.get("integration") != owner or doc.get("state") not in states:
                continue
            if meta:
                have = doc.get("metadata", {})
                if any(have.get(k) != v for k, v in meta.items()):
                    continue
            matched.append(doc)
        key = _newest_first
        if query.limit is not None and query.offset + query.limit < len(matched):
            ordered = heapq.nsmallest(query.offset + query.limit, matched, key=key)
        else:
            ordered = sorted(matched, key=key)
        end = None if query.limit is None else query.offset + query.limit
        return ordered[query.offset:end], len(matched)

    # --- changes ------------------------------------------------------------------------------------

    def learn(self, internal_id: str, server: str, owner: str) -> None:
        """A meeting created through the LB: its recording will come from ``server`` and be ``owner``'s."""
        self._created[internal_id] = (server, owner)

    def created_on(self, internal_id: str) -> tuple[str, str] | None:
        """(server, integration) of a meeting the LB created under this internal ID, if it still knows."""
        return self._created.get(internal_id)

    def server_for(self, record_id: str, owner: str) -> str | None:
        """The live-pool server holding ``owner``'s recording (its origin), never another integration's."""
        doc = self.owned(record_id, owner)
        if doc is not None:
            server = doc.get("server", "")
        else:
            server, holder = self._created.get(record_id, ("", "")) or ("", "")
            if holder != owner:
                return None
        return server if server and self.pool.get(server) is not None else None

    async def synced(self, server: str, node: etree._Element) -> dict[str, Any] | None:
        """Upsert what a server's getRecordings says about one recording; the index's own changes win."""
        found = recording_from_xml(node)
        if found is None:
            return None
        created = self._created.get(found["internal_meeting_id"])
        if created is not None and "mconflb-institution" not in found["metadata"]:
            found["integration"] = created[1]
        current = self._docs.get(found["record_id"])
        if current is None:
            doc = {**found, "server": server, "source": "sync", "stored_formats": [], "pending": {},
                   "deleted_at": None}
            await self.save(doc)
            return doc
        if current.get("integration") != found["integration"] or current.get("server") not in (server, "", None):
            return current  # another server's or integration's copy under the same ID: never merged
        if current.get("pending") or current.get("state") == "deleted":
            return current  # the index's change waits to be pushed to the server
        changed = {k: v for k, v in found.items()
                   if k not in ("integration",) and current.get(k) != v
                   and not (k in ("playback", "size") and current.get("stored_formats"))}
        if changed or not current.get("server"):
            await self.save({**current, **changed, "server": server})
        return self._docs[found["record_id"]]

    async def change(self, doc: dict[str, Any], *, state: str | None = None,
                     meta: dict[str, str] | None = None, pushed: bool = False) -> dict[str, Any]:
        """Publish, unpublish, delete or re-label; kept ``pending`` until the origin server has it too."""
        doc = {**doc, "metadata": dict(doc.get("metadata", {})), "pending": dict(doc.get("pending") or {})}
        if state is not None:
            doc["state"] = state
            doc["published"] = state == "published"
            doc["deleted_at"] = now_ms() if state == "deleted" else None
            if not pushed:
                doc["pending"]["state"] = state
        for key, value in (meta or {}).items():
            if value:
                doc["metadata"][key] = value
            else:
                doc["metadata"].pop(key, None)
            if not pushed:
                doc["pending"].setdefault("meta", {})[key] = value
        await self.save(doc)
        return doc

    async def pushed(self, record_id: str, what: str) -> None:
        """The origin has taken the pending ``what`` (``state`` or ``meta``)."""
        doc = self._docs.get(record_id)
        if doc is not None and doc.get("pending", {}).get(what) is not None:
            pending = {k: v for k, v in doc["pending"].items() if k != what}
            await self.save({**doc, "pending": pending})

    def pending_on(self, server: str) -> list[dict[str, Any]]:
        return [d for d in self._docs.values() if d.get("pending") and d.get("server") == server]

    async def purge(self, now: int | None = None) -> list[dict[str, Any]]:
        """Deleted recordings past ``retention_days`` leave the index; answers them (their files go too)."""
        if self.retention_days <= 0:
            return []
        cutoff = (now or now_ms()) - int(self.retention_days * DAY_MS)
        expired = [d for d in self._docs.values()
                   if d.get("state") == "deleted" and (d.get("deleted_at") or 0) and d["deleted_at"] < cutoff]
        for doc in expired:
            await self.drop(doc["record_id"])
        return expired

    def note_import(self, entry: dict[str, Any]) -> None:
        self.last_imports.append(entry)
        del self.last_imports[:-20]


def _newest_first(doc: dict[str, Any]) -> tuple[int, str]:
    return (-int(doc.get("start_time") or 0), doc["record_id"])
