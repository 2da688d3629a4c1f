"""Durable state behind a narrow interface: keyed documents in tables, plus partitioned event logs.

The interface is what a shared (Redis) store can offer too: get/put/put_if_absent/delete/all on
tables, and events appended to named partitions, read back one partition at a time.
``TinyDbStore`` is the embedded default. It keeps every table in memory; one writer thread makes
changes durable by appending them to a journal (one fsync per batch, whatever the number of
meetings) and now and then folds the journal into the TinyDB file, which is replaced atomically
(temp file, fsync, rename). A ``kill -9`` can lose at most writes nobody was told had succeeded,
and never corrupts a file.

A change is visible to readers as soon as it is made, but it only enters the committed tables
once its journal line is on disk: a failed write (a full disk, an I/O error) fails its callers and
leaves nothing of it in memory. An append never lands after a torn fragment: the file is cut back
to the last line known to be whole first. One process owns a store: it holds an exclusive lock.
Every file is created 0600 and every directory 0700: they hold meeting passwords and secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinydb import TinyDB
from tinydb.storages import Storage

if TYPE_CHECKING:
    from lb_core.config import Config

log = logging.getLogger("bbb_lb.store")

Doc = dict[str, Any]
FILE_MODE = 0o600
DIR_MODE = 0o700


class StoreError(Exception):
    """The store could not be opened or written."""


class StoreLocked(StoreError):
    """Another process holds the store."""


class StoreUnavailable(StoreError):
    """A shared store did not answer (down, unreachable, too slow): the call may be tried again later."""


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
        """Store ``doc``; durable when this returns, and not stored at all when it raises."""

    @abstractmethod
    async def put_if_absent(self, table: str, key: str, doc: Doc) -> Doc:
        """Store ``doc`` unless ``key`` exists; return whichever document is stored."""

    @abstractmethod
    async def delete(self, table: str, key: str) -> None: ...

    @abstractmethod
    async def tables(self) -> list[str]:
        """The names of the tables holding documents (for ``bbb-lb migrate``)."""

    @abstractmethod
    def append_events(self, events: Iterable[Doc]) -> None:
        """Queue events for writing; never blocks, written in batches. Each names its partition in ``"p"``."""

    @abstractmethod
    async def read_events(self, partition: str) -> list[Doc]:
        """Every event appended to ``partition`` so far (written or still queued), in order."""

    @abstractmethod
    async def event_partitions(self) -> list[str]:
        """The partitions that hold events, oldest first."""

    @abstractmethod
    async def drop_event_partitions(self, partitions: Iterable[str]) -> None:
        """Delete whole partitions (retention)."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""

    async def problem(self) -> str | None:
        """Why the store cannot serve right now (for /health), or None when it can."""
        return None

    def stats(self) -> dict[str, float]:
        return {}


def make_store(config: Config) -> Store:
    """The store ``config.store`` names (not opened yet): the embedded TinyDB file or a shared Redis."""
    if config.store.backend == "redis":  # redis-py is imported only when used
        from lb_core.store_redis import RedisStore

        assert config.store.url is not None  # the config requires it for this backend
        return RedisStore(config.store.url, config.store.prefix, timeout_s=config.store_timeout_s,
                          connect_timeout_s=config.backend_connect_timeout_s,
                          max_connections=config.store.max_connections)
    return TinyDbStore(config.store_path)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by the owner only."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        os.chmod(folder, DIR_MODE)  # mkdir's mode is cut by the umask


def open_private(path: str, flags: int) -> int:
    """``os.open`` that creates the file 0600."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def split_lines(data: bytes, where: str) -> list[Doc]:
    """JSON lines back into documents; a torn or garbled line (a crash mid-write) is skipped with a warning."""
    docs: list[Doc] = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s: skipped an incomplete line (%d bytes)", where, len(raw))
            continue
        if isinstance(doc, dict):
            docs.append(doc)
        else:
            log.warning("%s: skipped a line that is not a document", where)
    return docs


def append_whole(path: str, data: bytes, good_size: int | None) -> int:
    """Append ``data`` after the last whole line and make it durable; return the new size.

    ``good_size`` is where the file is known to end after its last whole write (None: the file's
    size is trusted). Whatever lies beyond it (a torn write) is cut off first; if this write
    fails, the file is cut back again, so a retry never duplicates or follows a fragment.
    """
    fd = open_private(path, os.O_WRONLY | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        start = size if good_size is None else good_size
        if size != start:
            os.ftruncate(fd, start)
        try:
            os.lseek(fd, start, os.SEEK_SET)
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        return start + len(data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until everything is written (the one place tests patch to inject ENOSPC/EIO)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
        tmp = f"{self.path}.tmp-{os.getpid()}"
        # json.dumps, not json.dump: dump streams through the pure-Python encoder (10x slower,
        # holding the GIL the proxy's event loop needs); dumps uses the C encoder.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)

    def close(self) -> None:
        pass


Change = tuple[str, str, Doc | None]


class TinyDbStore(Store):
    """Tables in one TinyDB file plus a journal; events in JSON-lines partition files."""

    COMPACT_AFTER_BYTES = 4 * 1024 * 1024  # fold the journal into the TinyDB file past this size

    def __init__(self, path: str, event_flush_interval_s: float = 0.5) -> None:
        self.path = path
        self.events_dir = str(Path(path).with_suffix("")) + "-events"
        self.lock_path = f"{path}.lock"
        self.event_flush_interval_s = event_flush_interval_s
        self._tables: dict[str, dict[str, Doc]] = {}  # committed: on disk
        self._uncommitted: dict[tuple[str, str], list[Doc | None]] = {}  # made, not yet on disk, in order
        self._ids: dict[str, dict[str, int]] = {}
        self._next_id: dict[str, int] = {}
        self._db: TinyDB | None = None
        self._lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-store")
        self._event_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-events")
        self._journal_index = 1
        self._journal_bytes = 0
        self._journal_good: int | None = 0  # where the current journal ends after its last whole write
        self._compaction: asyncio.Task[None] | None = None
        self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-compact")
        self._state_dirty = asyncio.Event()
        self._state_waiters: list[asyncio.Future[None]] = []
        self._changes: list[Change] = []
        self._pending_events: list[Doc] = []
        self._event_sizes: dict[str, int] = {}  # partition file -> size after its last whole write
        self._events_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._event_writer: asyncio.Task[None] | None = None
        self._closed = False
        self.write_seconds_total = 0.0
        self.writes_total = 0
        self.last_write_seconds = 0.0
        self.write_failures_total = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return  # opened already (``bbb-lb run`` opens it first, to stop early on a locked store)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._writer = asyncio.create_task(self._write_state_forever(), name="store-writer")
        self._event_writer = asyncio.create_task(self._write_events_forever(), name="event-writer")

    def _lock(self) -> None:
        """One process per store: a second one would interleave journals and lose writes."""
        try:
            make_private_dir(Path(self.path).parent)
            fd = open_private(self.lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreLocked(f"the store {self.path} is in use by another bbb-lb process{by}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _load(self) -> None:
        self._lock()
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
        make_private_dir(Path(self.events_dir))
        self._migrate_event_segments()

    @property
    def journal_path(self) -> str:
        """The journal new changes go to; older ones wait to be folded into the TinyDB file."""
        return f"{self.path}.journal.{self._journal_index:06d}"

    def _journals(self) -> list[Path]:
        folder, name = Path(self.path).parent, Path(self.path).name
        return sorted(folder.glob(name + ".journal*"))

    def _replay_journal(self) -> None:
        """Apply changes made after the last compaction; a torn line (a crash mid-write) is skipped."""
        journals = self._journals()
        for journal in journals:
            for change in split_lines(journal.read_bytes(), str(journal)):
                table, key = change.get("t"), change.get("k")
                if not isinstance(table, str) or not isinstance(key, str):
                    log.warning("%s: skipped a line that is not a change", journal)
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

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(StoreError):
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
        self._event_executor.shutdown(wait=True)
        self._compactor.shutdown(wait=True)
        self._unlock()

    # --- tables ----------------------------------------------------------------------------

    async def get(self, table: str, key: str) -> Doc | None:
        return self.get_now(table, key)

    def get_now(self, table: str, key: str) -> Doc | None:
        """Synchronous read for the embedded store's callers on the hot path."""
        if self._uncommitted:
            pending = self._uncommitted.get((table, key))
            if pending:
                return pending[-1]
        return self._tables.get(table, {}).get(key)

    async def all(self, table: str) -> dict[str, Doc]:
        docs = dict(self._tables.get(table, {}))
        for (name, key), pending in self._uncommitted.items():
            if name == table:
                if pending[-1] is None:
                    docs.pop(key, None)
                else:
                    docs[key] = pending[-1]
        return docs

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

    async def tables(self) -> list[str]:
        names = set(self._tables) | {name for name, _ in self._uncommitted}
        return sorted([name for name in names if await self.all(name)])

    async def _change(self, table: str, key: str, doc: Doc | None) -> None:
        if self._closed:
            raise StoreError("store is closed")
        self._uncommitted.setdefault((table, key), []).append(doc)
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

    def _settle(self, changes: list[Change], committed: bool) -> None:
        """Changes leave the uncommitted overlay; into the tables if their write succeeded."""
        for table, key, doc in changes:
            pending = self._uncommitted.get((table, key))
            if pending:
                pending.pop(0)
                if not pending:
                    del self._uncommitted[(table, key)]
            if not committed:
                continue
            if doc is None:
                self._tables.get(table, {}).pop(key, None)
            else:
                self._tables.setdefault(table, {})[key] = doc

    def _snapshot(self) -> dict[str, dict[str, Doc]]:
        """The TinyDB file contents (committed changes only): document ids kept stable per key."""
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
            data = "".join(json.dumps({"t": t, "k": k, "d": d}, separators=(",", ":"), ensure_ascii=False) + "\n"
                           for t, k, d in changes).encode("utf-8")
            started = time.perf_counter()
            try:
                if data:
                    self._journal_good = await loop.run_in_executor(
                        self._executor, append_whole, self.journal_path, data, self._journal_good)
            except Exception as exc:  # a full disk must fail the callers, not the writer
                self.write_failures_total += 1
                log.error("store write failed, %d changes not made: %s", len(changes), _reason(exc))
                self._settle(changes, committed=False)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(StoreError(f"store write failed: {_reason(exc)}"))
                continue
            self._settle(changes, committed=True)
            self._journal_bytes += len(data)
            self._account(time.perf_counter() - started)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._journal_bytes > self.COMPACT_AFTER_BYTES and self._compaction is None:
                self._start_compaction()

    def _start_compaction(self) -> None:
        """Fold the journals so far into the TinyDB file on a thread of its own.

        New changes go to a fresh journal meanwhile, so commits never wait for a compaction. The
        snapshot holds every committed change; replaying a journal over it again is harmless.
        """
        snapshot = self._snapshot()
        done_with = [p for p in self._journals() if str(p) <= self.journal_path]
        self._journal_index += 1
        self._journal_bytes = 0
        self._journal_good = 0

        def compact() -> None:
            assert self._db is not None
            self._db.storage.write(snapshot)
            for journal in done_with:
                journal.unlink(missing_ok=True)

        async def run() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._compactor, compact)
            except Exception as exc:
                log.error("store compaction failed (the journals are kept): %s", _reason(exc))
            finally:
                self._compaction = None

        self._compaction = asyncio.create_task(run(), name="store-compaction")

    def _account(self, seconds: float) -> None:
        self.writes_total += 1
        self.write_seconds_total += seconds
        self.last_write_seconds = seconds

    # --- events ----------------------------------------------------------------------------

    def _partition_path(self, partition: str) -> str:
        if not partition or not partition.isalnum():
            raise StoreError(f"not a partition name: {partition!r}")
        return os.path.join(self.events_dir, f"{partition}.jsonl")

    def _migrate_event_segments(self) -> None:
        """Event files of earlier versions (TinyDB segments) become partitions of the same number."""
        for old in sorted(Path(self.events_dir).glob("events-*.json")):
            data = AtomicJSONStorage(str(old)).read() or {}
            table = data.get("events", {})
            lines = "".join(json.dumps(table[k], separators=(",", ":"), ensure_ascii=False) + "\n"
                            for k in sorted(table, key=int))
            target = self._partition_path(f"{int(old.stem.split('-')[1]):08d}")
            tmp = target + ".tmp"
            fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                write_all(fd, lines.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            old.unlink()
            log.info("converted %s to %s", old, target)

    def append_events(self, events: Iterable[Doc]) -> None:
        self._pending_events.extend(events)

    async def read_events(self, partition: str) -> list[Doc]:
        path = self._partition_path(partition)
        async with self._events_lock:
            await self._write_events_locked()
            queued = [d for d in self._pending_events if d.get("p") == partition]  # left by a failed write
            size = self._event_sizes.get(path)
            docs = await asyncio.get_running_loop().run_in_executor(self._event_executor, _read_lines, path, size)
        return docs + queued

    async def event_partitions(self) -> list[str]:
        names = {p.stem for p in Path(self.events_dir).glob("*.jsonl")}
        names |= {str(d.get("p")) for d in self._pending_events}
        return sorted(names)

    async def drop_event_partitions(self, partitions: Iterable[str]) -> None:
        paths = [self._partition_path(p) for p in partitions]
        gone = set(partitions)
        async with self._events_lock:
            self._pending_events = [d for d in self._pending_events if d.get("p") not in gone]

            def unlink() -> None:
                for path in paths:
                    Path(path).unlink(missing_ok=True)

            await asyncio.get_running_loop().run_in_executor(self._event_executor, unlink)
            for path in paths:
                self._event_sizes.pop(path, None)

    async def _write_events_forever(self) -> None:
        while True:
            await asyncio.sleep(self.event_flush_interval_s)
            async with self._events_lock:
                await self._write_events_locked()

    async def _write_events_locked(self) -> None:
        """Append the queued events; on failure every file of the batch is cut back and the batch requeued."""
        if not self._pending_events:
            return
        batch, self._pending_events = self._pending_events, []
        grouped: dict[str, list[str]] = {}
        for event in batch:
            grouped.setdefault(self._partition_path(str(event.get("p"))), []).append(
                json.dumps(event, separators=(",", ":"), ensure_ascii=False))
        writes = [(path, ("\n".join(lines) + "\n").encode("utf-8"), self._event_sizes.get(path))
                  for path, lines in grouped.items()]
        started = time.perf_counter()
        try:
            sizes = await asyncio.get_running_loop().run_in_executor(self._event_executor, _append_batch, writes)
        except Exception as exc:
            self.write_failures_total += 1
            log.error("event write failed, %d events kept for a retry: %s", len(batch), _reason(exc))
            self._pending_events[:0] = batch
            return
        self._event_sizes.update(sizes)
        self._account(time.perf_counter() - started)

    async def flush(self) -> None:
        if self._closed:
            return
        if self._writer is not None:
            await self._durable()
        async with self._events_lock:
            await self._write_events_locked()

    def stats(self) -> dict[str, float]:
        return {
            "writes_total": self.writes_total,
            "write_seconds_total": self.write_seconds_total,
            "last_write_seconds": self.last_write_seconds,
            "write_failures_total": self.write_failures_total,
            "events_queued": len(self._pending_events),
        }


def _append_batch(writes: list[tuple[str, bytes, int | None]]) -> dict[str, int]:
    """Append to every partition file or, when one fails, to none (the others are cut back)."""
    done: list[tuple[str, int]] = []
    sizes: dict[str, int] = {}
    try:
        for path, data, good in writes:
            start = os.path.getsize(path) if good is None and os.path.exists(path) else (good or 0)
            sizes[path] = append_whole(path, data, start)
            done.append((path, start))
    except BaseException:
        for path, start in done:
            try:
                os.truncate(path, start)
            except OSError as exc:  # the next append to it cuts it first (its size stays unconfirmed)
                log.error("could not cut %s back after a failed write: %s", path, _reason(exc))
        raise
    return sizes


def _read_lines(path: str, size: int | None) -> list[Doc]:
    """The whole lines of a partition file, up to its last confirmed write."""
    try:
        with open(path, "rb") as handle:
            data = handle.read() if size is None else handle.read(size)
    except FileNotFoundError:
        return []
    return split_lines(data, path)


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc) or type(exc).__name__
