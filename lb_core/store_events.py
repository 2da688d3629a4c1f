"""Event partitions on disk: one JSON-lines file per partition, appended in batches off the request path.

Events are queued without blocking and written every ``flush_interval_s`` (or on ``flush``), one
append and fsync per partition file in the batch. A batch lands in every file or in none: when one
file fails, the others are cut back and the whole batch is queued again, so a retry never
duplicates an event. Reads stop at the last confirmed write, so a torn tail is never parsed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lb_core.durable_files import (
    WriteStats,
    append_whole,
    json_line,
    make_private_dir,
    reason,
    split_lines,
)
from lb_core.store import Doc, StoreError

log = logging.getLogger("bbb_lb.store")


class EventPartitionFiles:
    """The event partitions in one folder: queued, written in batches, read back one partition at a time."""

    def __init__(self, folder: str, flush_interval_s: float, stats: WriteStats) -> None:
        self.folder = folder
        self.flush_interval_s = flush_interval_s
        self.stats = stats
        self._pending: list[Doc] = []
        self._sizes: dict[str, int] = {}  # partition file -> size after its last whole write
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbb-lb-events")
        self._writer: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    def prepare(self) -> None:
        """Create the folder (on the store's loading thread)."""
        make_private_dir(Path(self.folder))

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever(), name="event-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def path(self, partition: str) -> str:
        if not partition or not partition.isalnum():
            raise StoreError(f"not a partition name: {partition!r}")
        return os.path.join(self.folder, f"{partition}.jsonl")

    def append(self, events: Iterable[Doc]) -> None:
        self._pending.extend(events)

    async def read(self, partition: str) -> list[Doc]:
        path = self.path(partition)
        async with self._lock:
            await self._write_locked()
            queued = [d for d in self._pending if d.get("p") == partition]  # left by a failed write
            size = self._sizes.get(path)
            docs = await asyncio.get_running_loop().run_in_executor(self._executor, _read_lines, path, size)
        return docs + queued

    async def names(self) -> list[str]:
        names = {p.stem for p in Path(self.folder).glob("*.jsonl")}
        names |= {str(d.get("p")) for d in self._pending}
        return sorted(names)

    async def drop(self, partitions: Iterable[str]) -> None:
        paths = [self.path(p) for p in partitions]
        gone = set(partitions)
        async with self._lock:
            self._pending = [d for d in self._pending if d.get("p") not in gone]

            def unlink() -> None:
                for path in paths:
                    Path(path).unlink(missing_ok=True)

            await asyncio.get_running_loop().run_in_executor(self._executor, unlink)
            for path in paths:
                self._sizes.pop(path, None)

    async def flush(self) -> None:
        async with self._lock:
            await self._write_locked()

    async def _write_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def _write_locked(self) -> None:
        """Append the queued events; on failure every file of the batch is cut back and the batch requeued."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        grouped: dict[str, list[Doc]] = {}
        for event in batch:
            grouped.setdefault(self.path(str(event.get("p"))), []).append(event)
        # Encoding a batch grows with it: it runs in the writer thread with the append (queued events
        # are never changed after they are queued).
        writes = [(path, events, self._sizes.get(path)) for path, events in grouped.items()]
        started = time.perf_counter()
        try:
            sizes = await asyncio.get_running_loop().run_in_executor(self._executor, _append_batch, writes)
        except Exception as exc:
            self.stats.failed()
            log.error("event write failed, %d events kept for a retry: %s", len(batch), reason(exc))
            self._pending[:0] = batch
            return
        self._sizes.update(sizes)
        self.stats.wrote(time.perf_counter() - started)


def _append_batch(writes: list[tuple[str, list[Doc], int | None]]) -> dict[str, int]:
    """Append to every partition file or, when one fails, to none (the others are cut back)."""
    done: list[tuple[str, int]] = []
    sizes: dict[str, int] = {}
    try:
        for path, events, good in writes:
            data = "".join(json_line(event) for event in events).encode("utf-8")
            start = os.path.getsize(path) if good is None and os.path.exists(path) else (good or 0)
            sizes[path] = append_whole(path, data, start)
            done.append((path, start))
    except BaseException:
        for path, start in done:
            try:
                os.truncate(path, start)
            except OSError as exc:  # the next append to it cuts it first (its size stays unconfirmed)
                log.error("could not cut %s back after a failed write: %s", path, reason(exc))
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
