"""The shared store: every table and event partition in one Redis, so several bbb-lb processes are one LB.

Layout (every key starts with the prefix, so several LBs can share one Redis):

- ``{prefix}:t:{table}``: a hash per table, field = document key, value = the document as JSON;
- ``{prefix}:e:{partition}``: a list per event partition, one JSON event per item, in arrival order;
- ``{prefix}:ep``: the set of partitions holding events.

Other parts of bbb-lb build their own shared state on the same connection through ``.redis`` (a
``redis.asyncio.Redis`` answering ``str``) and ``.key(*parts)``.

Every command is bounded by ``timeout_s`` (the socket timeout, and an overall deadline around
each call, retries included), so a Redis that is down or slow fails a call promptly instead of
hanging it. Every Redis failure surfaces as ``StoreUnavailable`` (a ``StoreError``) whose message
never holds the URL's password; the gateway answers it with one BBB-style FAILED. The client
reconnects by itself: when Redis is back, the next call works, without a restart of bbb-lb.

Events are queued in memory (``append_events`` never blocks) and written by one task in batches
as soon as the event loop is free, so another instance reads them a moment later; when Redis is
away they stay queued (up to ``MAX_QUEUED_EVENTS``) and are written once it returns. A batch that
may have been written before its reply was lost is written again and read back once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from lb_core.config_types import redacted_url
from lb_core.store import Doc, Store, StoreError, StoreUnavailable

log = logging.getLogger("bbb_lb.store")

T = TypeVar("T")

# Store the document unless the field exists; answer whichever document is stored (one atomic step).
_PUT_IF_ABSENT = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then return stored end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _dumps(doc: Doc) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


class RedisStore(Store):
    """Tables as hashes and event partitions as lists in one Redis; shared by every instance using it."""

    MAX_QUEUED_EVENTS = 100_000  # kept while Redis is away; beyond this the oldest are dropped (and counted)
    RETRY_AFTER_S = 0.5  # between event writes while Redis is away
    CLOSE_S = 2.0  # the longest a close waits for Redis, per step (the last flush, closing the connections)

    def __init__(self, url: str, prefix: str = "bbb-lb", *, timeout_s: float = 2.0,
                 connect_timeout_s: float | None = None, max_connections: int = 64) -> None:
        self.url = url
        self.safe_url = redacted_url(url)
        self.prefix = prefix
        self.timeout_s = timeout_s
        connect = min(connect_timeout_s or timeout_s, timeout_s)
        tcp = {} if url.startswith("unix:") else {"socket_keepalive": True}  # a dead peer host is noticed
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, decode_responses=True, max_connections=max_connections, timeout=timeout_s,
                socket_timeout=timeout_s, socket_connect_timeout=connect, **tcp,
                # A connection left over from before a Redis restart fails once; one quick retry reconnects.
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
                retry_on_error=[RedisConnectionError], health_check_interval=30)
        except ValueError as exc:
            raise StoreError(f"store.url {self.safe_url}: {_reason(exc)}") from None
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._put_if_absent = self.redis.register_script(_PUT_IF_ABSENT)
        self._pending_events: list[Doc] = []
        self._writing = 0  # events of the batch being written: still queued until Redis confirms them
        self._events_dirty = asyncio.Event()
        self._events_lock = asyncio.Lock()
        self._event_writer: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False
        self.writes_total = 0
        self.write_seconds_total = 0.0
        self.last_write_seconds = 0.0
        self.write_failures_total = 0
        self.events_dropped_total = 0

    def key(self, *parts: str) -> str:
        """A Redis key of this LB: ``{prefix}:part:part...``."""
        return ":".join((self.prefix, *parts))

    def _table(self, table: str) -> str:
        return self.key("t", table)

    def _partition(self, partition: str) -> str:
        if not partition or not partition.isalnum():
            raise StoreError(f"not a partition name: {partition!r}")
        return self.key("e", partition)

    async def _call(self, work: Awaitable[T]) -> T:
        """Run one Redis round trip within ``timeout_s``; any Redis failure becomes ``StoreUnavailable``.

        A task cancelled during the call ends with ``CancelledError`` even when the client dropped it:
        redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11 loses a cancel that lands
        as the send completes (CPython gh-86296, fixed in 3.12). The task then went on as if never asked to
        stop: a stopping LB waited forever for its poll loop to end."""
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(self.timeout_s):
                return await work
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis at {self.safe_url} is not available: {_reason(exc)}") from None
        finally:
            if task is not None and task.cancelling() > asked:
                raise asyncio.CancelledError

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Check Redis answers (a clear error naming the URL, without its password, when not)."""
        if self._closed:
            raise StoreError("store is closed")
        if self._opened:
            return
        try:
            await self._call(self.redis.ping())
        except StoreUnavailable as exc:
            raise StoreError(f"cannot reach the store: {exc}") from None
        self._opened = True
        self._event_writer = asyncio.create_task(self._write_events_forever(), name="redis-event-writer")
        for warning in await self.setup_warnings():
            log.warning("Redis at %s: %s", self.safe_url, warning)

    async def setup_warnings(self) -> list[str]:
        """What in the Redis setup can lose meetings: no persistence, or eviction of keys under memory pressure.

        Read from INFO and CONFIG when the server allows them (a managed Redis may refuse CONFIG).
        """
        warnings: list[str] = []
        with contextlib.suppress(StoreError):
            persistence = await self._call(self.redis.info("persistence"))
            if str(persistence.get("aof_enabled", "1")) == "0":
                warnings.append("append-only persistence is off (appendonly no): a restart of Redis would lose "
                                "every meeting; set appendonly yes")
        with contextlib.suppress(StoreError):
            policy = (await self._call(self.redis.config_get("maxmemory-policy"))).get("maxmemory-policy", "")
            if policy and policy != "noeviction":
                warnings.append(f"maxmemory-policy is {policy}: Redis may evict meetings when its memory is full; "
                                "set noeviction")
        return warnings

    async def close(self, within: float | None = None) -> None:
        """Write the queued events and close the connections, whatever Redis does: each step ``CLOSE_S`` at
        most and all of them ``within`` (a stop must end within the service's stop timeout, and the per-call
        ``timeout_s`` may be longer)."""
        if self._closed:
            return
        deadline = time.monotonic() + (within if within is not None else 3 * self.CLOSE_S)

        def step() -> float:
            return max(0.1, min(self.timeout_s, self.CLOSE_S, deadline - time.monotonic()))

        if self._event_writer is not None:  # first, so the last flush never waits for the writer's lock
            self._event_writer.cancel()  # a batch it was writing goes back to the queue
            await asyncio.wait({self._event_writer}, timeout=step())
        try:
            async with asyncio.timeout(step()):
                await self.flush()
        except (StoreError, TimeoutError):
            pass
        self._closed = True
        if self._pending_events:
            log.error("store closed with %d events not written (Redis at %s unavailable)",
                      len(self._pending_events), self.safe_url)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), step())

    def _writable(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    async def problem(self) -> str | None:
        try:
            await self._call(self.redis.ping())
        except StoreUnavailable as exc:
            return str(exc)
        return None

    # --- tables ----------------------------------------------------------------------------

    async def get(self, table: str, key: str) -> Doc | None:
        raw = await self._call(self.redis.hget(self._table(table), key))
        return json.loads(raw) if raw is not None else None

    async def all(self, table: str) -> dict[str, Doc]:
        raw = await self._call(self.redis.hgetall(self._table(table)))
        return {key: json.loads(value) for key, value in raw.items()}

    async def put(self, table: str, key: str, doc: Doc) -> None:
        self._writable()
        await self._timed(self.redis.hset(self._table(table), key, _dumps(doc)))

    async def put_if_absent(self, table: str, key: str, doc: Doc) -> Doc:
        self._writable()
        stored = await self._timed(self._put_if_absent(keys=[self._table(table)], args=[key, _dumps(doc)]))
        return json.loads(stored)

    async def delete(self, table: str, key: str) -> None:
        self._writable()
        await self._timed(self.redis.hdel(self._table(table), key))

    async def tables(self) -> list[str]:
        start = len(self._table(""))
        names = [name[start:] async for name in self._scan(self._table("*"))]
        return sorted(name for name in names if ":" not in name)  # not another LB's keys under "{prefix}:t:..."

    async def _scan(self, pattern: str) -> AsyncIterator[str]:
        cursor: int | str = 0
        while True:
            cursor, names = await self._call(self.redis.scan(cursor, match=pattern, count=500))
            for name in names:
                yield name
            if int(cursor) == 0:
                return

    async def _timed(self, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await self._call(work)
        except StoreUnavailable:
            self.write_failures_total += 1
            raise
        seconds = time.perf_counter() - started
        self.writes_total += 1
        self.write_seconds_total += seconds
        self.last_write_seconds = seconds
        return result

    # --- events ----------------------------------------------------------------------------

    def append_events(self, events: Iterable[Doc]) -> None:
        self._pending_events.extend(events)
        overflow = len(self._pending_events) - self.MAX_QUEUED_EVENTS
        if overflow > 0:
            del self._pending_events[:overflow]
            self.events_dropped_total += overflow
            log.error("Redis at %s unavailable: dropped the %d oldest queued events", self.safe_url, overflow)
        self._events_dirty.set()

    async def read_events(self, partition: str) -> list[Doc]:
        name = self._partition(partition)
        async with self._events_lock:
            with contextlib.suppress(StoreUnavailable):
                await self._write_events_locked()
            raw = await self._call(self.redis.lrange(name, 0, -1))
            queued = [d for d in self._pending_events if d.get("p") == partition]  # left by a failed write
        # A batch whose reply was lost (a timeout after Redis applied it) is written again: every event is
        # a distinct document (joins carry their own key), so an identical line is that same event again.
        return [json.loads(item) for item in dict.fromkeys(raw)] + queued

    async def event_partitions(self) -> list[str]:
        names = set(await self._call(self.redis.smembers(self.key("ep"))))
        names |= {str(d.get("p")) for d in self._pending_events}
        return sorted(names)

    async def drop_event_partitions(self, partitions: Iterable[str]) -> None:
        gone = list(partitions)
        if not gone:
            return
        names = [self._partition(p) for p in gone]
        async with self._events_lock:
            dropped = set(gone)
            self._pending_events = [d for d in self._pending_events if d.get("p") not in dropped]
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(*names)
            pipe.srem(self.key("ep"), *gone)
            await self._timed(pipe.execute())

    async def _write_events_forever(self) -> None:
        while True:
            await self._events_dirty.wait()
            self._events_dirty.clear()
            async with self._events_lock:
                try:
                    await self._write_events_locked()
                except StoreUnavailable as exc:
                    log.warning("events kept for a retry (%d queued): %s", len(self._pending_events), exc)
                    self._events_dirty.set()
                    await asyncio.sleep(self.RETRY_AFTER_S)

    async def _write_events_locked(self) -> None:
        """Write the queued events in one transaction; when it fails they stay queued, in order."""
        if not self._pending_events:
            return
        batch, self._pending_events = self._pending_events, []
        self._writing = len(batch)
        grouped: dict[str, list[str]] = {}
        for event in batch:
            grouped.setdefault(str(event.get("p")), []).append(_dumps(event))
        try:
            pipe = self.redis.pipeline(transaction=True)
            for partition, lines in grouped.items():
                pipe.rpush(self._partition(partition), *lines)
            pipe.sadd(self.key("ep"), *grouped)
            await self._timed(pipe.execute())
        except BaseException:
            self._pending_events[:0] = batch
            raise
        finally:
            self._writing = 0

    async def flush(self) -> None:
        if self._closed:
            return
        async with self._events_lock:
            await self._write_events_locked()

    def stats(self) -> dict[str, float]:
        return {
            "writes_total": self.writes_total,
            "write_seconds_total": self.write_seconds_total,
            "last_write_seconds": self.last_write_seconds,
            "write_failures_total": self.write_failures_total,
            "events_queued": len(self._pending_events) + self._writing,
            "events_dropped_total": self.events_dropped_total,
        }
