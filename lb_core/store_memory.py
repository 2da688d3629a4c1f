"""A store that keeps everything in memory: for tests, and the reference for the Store contract.

It does what the interface promises and nothing more, so a shared store (Redis) can be checked
against the same contract tests (tests/core/test_store_contract.py). Documents are copied on the way
in and out, as a store that serialises them would: a caller changing a dict it handed over or got
back never changes what is stored.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from lb_core.store import Doc, Store, StoreError


class MemoryStore(Store):
    """Tables and event partitions in dicts; lost when the process ends."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Doc]] = {}
        self._events: dict[str, list[Doc]] = {}
        self._open = False
        self._closed = False
        self.writes_total = 0

    async def open(self) -> None:
        """Open, or open again after ``close``: the contents stay, as a shared store's would."""
        self._open, self._closed = True, False

    async def close(self) -> None:
        self._open = False
        self._closed = True

    def _writable(self) -> None:
        if not self._open:
            raise StoreError("store is closed" if self._closed else "store is not open")

    async def get(self, table: str, key: str) -> Doc | None:
        doc = self._tables.get(table, {}).get(key)
        return copy.deepcopy(doc) if doc is not None else None

    async def all(self, table: str) -> dict[str, Doc]:
        return copy.deepcopy(self._tables.get(table, {}))

    async def put(self, table: str, key: str, doc: Doc) -> None:
        self._writable()
        self._tables.setdefault(table, {})[key] = copy.deepcopy(doc)
        self.writes_total += 1

    async def put_if_absent(self, table: str, key: str, doc: Doc) -> Doc:
        existing = self._tables.get(table, {}).get(key)
        if existing is None:
            await self.put(table, key, doc)
            existing = self._tables[table][key]
        return copy.deepcopy(existing)

    async def delete(self, table: str, key: str) -> None:
        self._writable()
        if self._tables.get(table, {}).pop(key, None) is not None:
            self.writes_total += 1

    async def tables(self) -> list[str]:
        return sorted(name for name, docs in self._tables.items() if docs)

    def append_events(self, events: Iterable[Doc]) -> None:
        for event in copy.deepcopy(list(events)):
            self._events.setdefault(str(event.get("p")), []).append(event)

    async def read_events(self, partition: str) -> list[Doc]:
        return copy.deepcopy(self._events.get(partition, []))

    async def event_partitions(self) -> list[str]:
        return sorted(self._events)

    async def drop_event_partitions(self, partitions: Iterable[str]) -> None:
        for partition in partitions:
            self._events.pop(partition, None)

    async def flush(self) -> None:
        """Nothing is queued: every write is done when its call returns."""

    def stats(self) -> dict[str, float]:
        return {"writes_total": self.writes_total, "write_seconds_total": 0.0, "last_write_seconds": 0.0,
                "events_queued": 0}
