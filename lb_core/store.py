"""Durable state behind a narrow interface: keyed documents in tables, plus an append-only event log.

The interface is what a shared (Redis) store can offer too: get/put/put_if_absent/delete/all on
tables, and appended events. ``TinyDbStore`` is the embedded default. It keeps every table in
memory; one writer thread makes changes durable by appending them to a journal (one fsync per
batch, whatever the number of meetings) and now and then folds the journal into the TinyDB file,
which is replaced atomically (temp file, fsync, rename). A ``kill -9`` can lose at most writes
nobody was told had succeeded, and never corrupts a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

log = logging.getLogger("bbb_lb.store")

Doc = dict[str, Any]


class StoreError(Exception):
    """The store could not be opened or written."""


class Store(ABC):
    """What the load balancer needs from persistence, and nothing more."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def get(self, table: str, key: str) -> Doc | None: ...

    @abstractmethod
    async def all(self, table: str) -> dict[str, Doc]: ...

    @abstractmethod
    async def put(self, table: str, key: str, doc: Doc) -> None:
        """Store ``doc``; durable when this returns."""

    @abstractmethod
    async def put_if_absent(self, table: str, key: str, doc: Doc) -> Doc:
        """Store ``doc`` unless ``key`` exists; return whichever document is stored."""

    @abstractmethod
    async def delete(self, table: str, key: str) -> None: ...

    @abstractmethod
    def append_events(self, events: Iterable[Doc]) -> None:
        """Queue events for writing; never blocks, written in batches."""

    @abstractmethod
    async def read_events(self) -> list[Doc]: ...

    @abstractmethod
    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""

    def stats(self) -> dict[str, float]:
        return {}


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces its file atomically, so a crash leaves the old or the new file."""

    def __init__(self, path: str, **_: Any) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.path}: not a valid TinyDB file ({exc})") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.path}: not a valid TinyDB file (top level is not an object)")
        return data

    def write(self, data: dict[str, Any]) -> None:
        tmp = f"{self.path}.tmp-{os.getpid()}"
        # json.dumps, not json.dump: dump streams through the pure-Python encoder (10x slower,
        # holding the GIL the proxy's event loop needs); dumps uses the C encoder.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        pass


class TinyDbStore(Store):
    """Tables in one TinyDB file; events in TinyDB segment files of bounded size."""

    SEGMENT_SIZE = 1000  # a flush rewrites the current segment only: keep that small
    COMPACT_AFTER_BYTES = 4 * 1024 * 1024  # fold the journal into the TinyDB file past this size

    def __init__(self, path: str, event_flush_interval_s: float = 0.5) -> None:
        self.path = path
        self.events_dir = str(Path(path).with_suffix("")) + "-events"
        self.event_flush_interval_s = event_flush_interval_s
        self._tables: dict[str, dict[str, Doc]] = {}
        self._ids: dict[str, dict[str, int]] = {}
        self._next_id: dict[str, int] = {}
        self._db: TinyDB | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-store")
        self._journal_index = 1
        self._journal_bytes = 0
        self._compaction: asyncio.Task[None] | None = None
        self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-compact")
        self._state_dirty = asyncio.Event()
        self._state_waiters: list[asyncio.Future[None]] = []
        self._changes: list[tuple[str, str, Doc | None]] = []
        self._pending_events: list[Doc] = []
        self._segment_index = 0
        self._segment_docs: dict[str, Doc] = {}
        self._writer: asyncio.Task[None] | None = None
        self._event_writer: asyncio.Task[None] | None = None
        self._closed = False
        self.write_seconds_total = 0.0
        self.writes_total = 0
        self.last_write_seconds = 0.0

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._writer = asyncio.create_task(self._write_state_forever(), name="store-writer")
        self._event_writer = asyncio.create_task(self._write_events_forever(), name="event-writer")

    def _load(self) -> None:
        for leftover in Path(self.path).parent.glob(Path(self.path).name + ".tmp-*"):
            leftover.unlink(missing_ok=True)
        self._db = TinyDB(self.path, storage=AtomicJSONStorage)
        for name in self._db.tables():
            table = self._db.table(name, cache_size=0)
            docs: dict[str, Doc] = {}
            ids: dict[str, int] = {}
            for document in table.all():
                key = document.get("_key")
                if not isinstance(key, str):
                    continue
                doc = {k: v for k, v in document.items() if k != "_key"}
                docs[key] = doc
                ids[key] = document.doc_id
            self._tables[name] = docs
            self._ids[name] = ids
            self._next_id[name] = max(ids.values(), default=0) + 1
        self._replay_journal()
        Path(self.events_dir).mkdir(parents=True, exist_ok=True)
        segments = sorted(Path(self.events_dir).glob("events-*.json"))
        self._segment_index = int(segments[-1].stem.split("-")[1]) if segments else 1
        current = self._segment_path(self._segment_index)
        data = AtomicJSONStorage(current).read() or {}
        self._segment_docs = dict(data.get("events", {}))

    @property
    def journal_path(self) -> str:
        """The journal new changes go to; older ones wait to be folded into the TinyDB file."""
        return f"{self.path}.journal.{self._journal_index:06d}"

    def _journals(self) -> list[Path]:
        folder, name = Path(self.path).parent, Path(self.path).name
        return sorted(folder.glob(name + ".journal*"))

    def _replay_journal(self) -> None:
        """Apply changes made after the last compaction; a torn last line (a crash mid-write) is skipped."""
        journals = self._journals()
        for journal in journals:
            for line in journal.read_text(encoding="utf-8").split("\n"):
                if not line.strip():
                    continue
                try:
                    change = json.loads(line)
                    table, key = change["t"], change["k"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s: skipped an incomplete journal line", journal)
                    continue
                if change.get("d") is None:
                    self._tables.get(table, {}).pop(key, None)
                else:
                    self._tables.setdefault(table, {})[key] = change["d"]
        # Fold what was replayed into the TinyDB file, so the journals start empty.
        assert self._db is not None
        self._db.storage.write(self._snapshot())
        for journal in journals:
            journal.unlink()

    def _segment_path(self, index: int) -> str:
        return os.path.join(self.events_dir, f"events-{index:06d}.json")

    async def close(self) -> None:
        if self._closed:
            return
        await self.flush()
        if self._compaction is not None:
            await self._compaction
        self._closed = True
        for task in (self._writer, self._event_writer):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._executor.shutdown(wait=True)
        self._compactor.shutdown(wait=True)

    # --- tables ----------------------------------------------------------------------------

    async def get(self, table: str, key: str) -> Doc | None:
        return self._tables.get(table, {}).get(key)

    def get_now(self, table: str, key: str) -> Doc | None:
        """Synchronous read for the embedded store's callers on the hot path."""
        return self._tables.get(table, {}).get(key)

    async def all(self, table: str) -> dict[str, Doc]:
        return dict(self._tables.get(table, {}))

    async def put(self, table: str, key: str, doc: Doc) -> None:
        stored = dict(doc)
        self._tables.setdefault(table, {})[key] = stored
        self._changes.append((table, key, stored))
        await self._durable()

    async def put_if_absent(self, table: str, key: str, doc: Doc) -> Doc:
        existing = self._tables.get(table, {}).get(key)
        if existing is not None:
            return existing
        await self.put(table, key, doc)
        return self._tables[table][key]

    async def delete(self, table: str, key: str) -> None:
        if self._tables.get(table, {}).pop(key, None) is not None:
            self._changes.append((table, key, None))
            await self._durable()

    async def _durable(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(future)
        self._state_dirty.set()
        await future

    def _snapshot(self) -> dict[str, dict[str, Doc]]:
        """The TinyDB file contents: document ids kept stable per key."""
        data: dict[str, dict[str, Doc]] = {}
        for name, docs in self._tables.items():
            ids = self._ids.setdefault(name, {})
            for gone in set(ids) - set(docs):
                del ids[gone]
            table: dict[str, Doc] = {}
            for key, doc in docs.items():
                doc_id = ids.get(key)
                if doc_id is None:
                    doc_id = ids[key] = self._next_id.get(name, 1)
                    self._next_id[name] = doc_id + 1
                table[str(doc_id)] = {**doc, "_key": key}
            data[name] = table
        return data

    async def _write_state_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._state_dirty.wait()
            self._state_dirty.clear()
            waiters, self._state_waiters = self._state_waiters, []
            changes, self._changes = self._changes, []
            lines = "".join(json.dumps({"t": t, "k": k, "d": d}, separators=(",", ":"), ensure_ascii=False) + "\n"
                            for t, k, d in changes)
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self._executor, self._append, self.journal_path, lines)
            except Exception as exc:  # a full disk must fail the callers, not the writer
                log.error("store write failed: %s", exc)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(StoreError(f"store write failed: {exc}"))
                continue
            self._journal_bytes += len(lines)
            self._account(time.perf_counter() - started)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._journal_bytes > self.COMPACT_AFTER_BYTES and self._compaction is None:
                self._start_compaction()

    @staticmethod
    def _append(path: str, lines: str) -> None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _start_compaction(self) -> None:
        """Fold the journals so far into the TinyDB file on a thread of its own.

        New changes go to a fresh journal meanwhile, so commits never wait for a compaction. The
        snapshot holds every change made so far; replaying a journal over it again is harmless.
        """
        snapshot = self._snapshot()
        done_with = [p for p in self._journals() if str(p) <= self.journal_path]
        self._journal_index += 1
        self._journal_bytes = 0

        def compact() -> None:
            assert self._db is not None
            self._db.storage.write(snapshot)
            for journal in done_with:
                journal.unlink(missing_ok=True)

        async def run() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._compactor, compact)
            except Exception as exc:
                log.error("store compaction failed (the journals are kept): %s", exc)
            finally:
                self._compaction = None

        self._compaction = asyncio.create_task(run(), name="store-compaction")

    def _account(self, seconds: float) -> None:
        self.writes_total += 1
        self.write_seconds_total += seconds
        self.last_write_seconds = seconds

    # --- events ----------------------------------------------------------------------------

    def append_events(self, events: Iterable[Doc]) -> None:
        self._pending_events.extend(events)

    async def read_events(self) -> list[Doc]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read_all_events)

    def _read_all_events(self) -> list[Doc]:
        events: list[Doc] = []
        for path in sorted(Path(self.events_dir).glob("events-*.json")):
            data = AtomicJSONStorage(str(path)).read() or {}
            table = data.get("events", {})
            events.extend(table[k] for k in sorted(table, key=int))
        return events

    async def _write_events_forever(self) -> None:
        while True:
            await asyncio.sleep(self.event_flush_interval_s)
            await self._write_events()

    async def _write_events(self) -> None:
        if not self._pending_events:
            return
        batch, self._pending_events = self._pending_events, []
        writes: list[tuple[str, dict[str, Any]]] = []
        for event in batch:
            if len(self._segment_docs) >= self.SEGMENT_SIZE:
                writes.append((self._segment_path(self._segment_index), {"events": self._segment_docs}))
                self._segment_index += 1
                self._segment_docs = {}
            self._segment_docs[str(len(self._segment_docs) + 1)] = event
        writes.append((self._segment_path(self._segment_index), {"events": dict(self._segment_docs)}))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write_segments, writes)
        except Exception as exc:
            log.error("event write failed, will retry: %s", exc)
            self._pending_events[:0] = batch
            return
        self._account(time.perf_counter() - started)

    @staticmethod
    def _write_segments(writes: list[tuple[str, dict[str, Any]]]) -> None:
        for path, data in writes:
            AtomicJSONStorage(path).write(data)

    async def flush(self) -> None:
        if self._closed:
            return
        if self._tables and self._writer is not None:
            await self._durable()
        await self._write_events()

    def stats(self) -> dict[str, float]:
        return {
            "writes_total": self.writes_total,
            "write_seconds_total": self.write_seconds_total,
            "last_write_seconds": self.last_write_seconds,
            "events_queued": len(self._pending_events),
        }
