"""``TinyDbStore``, the embedded default store: tables in memory, a journal, a TinyDB snapshot file.

Every table is kept in memory; one writer thread makes changes durable by appending them to the
journal (lb_core/store_journal.py: one fsync per batch, whatever the number of meetings) and now and
then folds the journal into the TinyDB file, which is replaced atomically (temp file, fsync,
rename). A ``kill -9`` can lose at most writes nobody was told had succeeded, and never corrupts a
file. Events live in partition files of their own (lb_core/store_events.py).

A change is visible to readers as soon as it is made, but it only enters the committed tables
(lb_core/store_tables.py) once its journal line is on disk: a failed write (a full disk, an I/O
error) fails its callers and leaves nothing of it in memory. One process owns a store: it holds an
exclusive lock file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from lb_core.durable_files import (
    WriteStats,
    json_line,
    make_private_dir,
    open_private,
    reason,
    replace_whole,
)
from lb_core.store import Doc, Store, StoreError, StoreLocked
from lb_core.store_events import EventPartitionFiles
from lb_core.store_journal import Change, Journal
from lb_core.store_tables import Tables

log = logging.getLogger("bbb_lb.store")


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces its file atomically, so a crash leaves the old or the new file."""

    def __init__(self, path: str, **_: Any) -> None:
        self.path = path
        make_private_dir(Path(path).parent)

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.path}: cannot read the store ({getattr(exc, 'strerror', None) or exc})") from None
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
        # json.dumps, not json.dump: dump streams through the pure-Python encoder (10x slower,
        # holding the GIL the proxy's event loop needs); dumps uses the C encoder.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        replace_whole(self.path, text.encode("utf-8"))

    def close(self) -> None:
        pass


class StoreLock:
    """One process per store: a second one would interleave journals and lose writes."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.path = f"{store_path}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            make_private_dir(Path(self.path).parent)
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StoreError(f"cannot open the store {self.store_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreLocked(f"the store {self.store_path} is in use by another bbb-lb process{by}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def migrate_event_segments(events: EventPartitionFiles) -> None:
    """Event files of earlier versions (TinyDB segments) become partitions of the same number."""
    for old in sorted(Path(events.folder).glob("events-*.json")):
        data = AtomicJSONStorage(str(old)).read() or {}
        table = data.get("events", {})
        lines = "".join(json_line(table[k]) for k in sorted(table, key=int))
        target = events.path(f"{int(old.stem.split('-')[1]):08d}")
        replace_whole(target, lines.encode("utf-8"))
        old.unlink()
        log.info("converted %s to %s", old, target)


class TinyDbStore(Store):
    """Tables in one TinyDB file plus a journal; events in JSON-lines partition files."""

    COMPACT_AFTER_BYTES = 4 * 1024 * 1024  # fold the journal into the TinyDB file past this size

    def __init__(self, path: str, event_flush_interval_s: float = 0.5) -> None:
        self.path = path
        self.events_dir = str(Path(path).with_suffix("")) + "-events"
        self._stats = WriteStats()
        self._events = EventPartitionFiles(self.events_dir, event_flush_interval_s, self._stats)
        self._journal = Journal(path)
        self._lock = StoreLock(path)
        self.lock_path = self._lock.path
        self._tables = Tables()
        self._db: TinyDB | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-store")
        self._compaction: asyncio.Task[None] | None = None
        self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-compact")
        self._state_dirty = asyncio.Event()
        self._state_waiters: list[asyncio.Future[None]] = []
        self._changes: list[Change] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return  # opened already (``bbb-lb run`` opens it first, to stop early on a locked store)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._writer = asyncio.create_task(self._write_state_forever(), name="store-writer")
        self._events.start()

    def _unlock(self) -> None:
        self._lock.release()

    def _load(self) -> None:
        self._lock.acquire()
        try:
            self._load_locked()
        except OSError as exc:
            self._unlock()
            raise StoreError(f"cannot open the store {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self._unlock()
            raise

    def _load_locked(self) -> None:
        for leftover in Path(self.path).parent.glob(Path(self.path).name + ".tmp-*"):
            leftover.unlink(missing_ok=True)
        self._db = TinyDB(self.path, storage=AtomicJSONStorage)
        for name in self._db.tables():
            documents = self._db.table(name, cache_size=0).all()
            self._tables.load(name, ((d["_key"], d.doc_id, {k: v for k, v in d.items() if k != "_key"})
                                     for d in documents if isinstance(d.get("_key"), str)))
        self._replay_journal()
        self._events.prepare()
        migrate_event_segments(self._events)

    @property
    def journal_path(self) -> str:
        """The journal new changes go to; older ones wait to be folded into the TinyDB file."""
        return self._journal.path

    def _replay_journal(self) -> None:
        """Apply changes made after the last compaction, then fold them into the TinyDB file."""
        journals = self._journal.files()
        for table, key, doc in Journal.replay(journals):
            self._tables.commit(table, key, doc)
        # Fold what was replayed into the TinyDB file, so the journals start empty.
        assert self._db is not None
        self._db.storage.write(self._tables.snapshot())
        Journal.remove(journals)

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(StoreError):
            await self.flush()
        if self._compaction is not None:
            await self._compaction
        self._closed = True
        if self._writer:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self._events.stop()
        self._executor.shutdown(wait=True)
        self._compactor.shutdown(wait=True)
        self._unlock()

    # --- tables ----------------------------------------------------------------------------

    async def get(self, table: str, key: str) -> Doc | None:
        return self.get_now(table, key)

    def get_now(self, table: str, key: str) -> Doc | None:
        """Synchronous read for the embedded store's callers on the hot path."""
        return self._tables.get(table, key)

    async def all(self, table: str) -> dict[str, Doc]:
        return self._tables.all(table)

    async def tables(self) -> list[str]:
        return self._tables.names()

    async def put(self, table: str, key: str, doc: Doc) -> None:
        await self._change(table, key, dict(doc))

    async def put_if_absent(self, table: str, key: str, doc: Doc) -> Doc:
        existing = self.get_now(table, key)
        if existing is not None:
            return existing
        stored = dict(doc)
        await self._change(table, key, stored)
        return stored

    async def delete(self, table: str, key: str) -> None:
        if self.get_now(table, key) is not None:
            await self._change(table, key, None)

    async def _change(self, table: str, key: str, doc: Doc | None) -> None:
        if self._closed:
            raise StoreError("store is closed")
        self._tables.stage(table, key, doc)
        self._changes.append((table, key, doc))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(future)
        self._state_dirty.set()
        await future

    async def _durable(self) -> None:
        """Wait for every change made so far (an empty batch when there is none)."""
        if self._closed:
            raise StoreError("store is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(future)
        self._state_dirty.set()
        await future

    async def _write_state_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._state_dirty.wait()
            self._state_dirty.clear()
            waiters, self._state_waiters = self._state_waiters, []
            changes, self._changes = self._changes, []
            data = Journal.encode(changes)
            started = time.perf_counter()
            try:
                if data:
                    await loop.run_in_executor(self._executor, self._journal.append, data)
            except Exception as exc:  # a full disk must fail the callers, not the writer
                self._stats.failed()
                log.error("store write failed, %d changes not made: %s", len(changes), reason(exc))
                self._tables.settle(changes, committed=False)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(StoreError(f"store write failed: {reason(exc)}"))
                continue
            self._tables.settle(changes, committed=True)
            self._stats.wrote(time.perf_counter() - started)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._journal.bytes > self.COMPACT_AFTER_BYTES and self._compaction is None:
                self._start_compaction()

    def _start_compaction(self) -> None:
        """Fold the journals so far into the TinyDB file on a thread of its own.

        New changes go to a fresh journal meanwhile, so commits never wait for a compaction. The
        snapshot holds every committed change; replaying a journal over it again is harmless.
        """
        snapshot = self._tables.snapshot()
        done_with = self._journal.rotate()

        def compact() -> None:
            assert self._db is not None
            self._db.storage.write(snapshot)
            Journal.remove(done_with)

        async def run() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._compactor, compact)
            except Exception as exc:
                log.error("store compaction failed (the journals are kept): %s", reason(exc))
            finally:
                self._compaction = None

        self._compaction = asyncio.create_task(run(), name="store-compaction")

    # --- events ----------------------------------------------------------------------------

    def append_events(self, events: Iterable[Doc]) -> None:
        self._events.append(events)

    async def read_events(self, partition: str) -> list[Doc]:
        return await self._events.read(partition)

    async def event_partitions(self) -> list[str]:
        return await self._events.names()

    async def drop_event_partitions(self, partitions: Iterable[str]) -> None:
        await self._events.drop(partitions)

    async def flush(self) -> None:
        if self._closed:
            return
        if self._writer is not None:
            await self._durable()
        await self._events.flush()

    def stats(self) -> dict[str, float]:
        return {**self._stats.as_dict(), "events_queued": self._events.queued}
