"""Durable state behind a narrow interface: keyed documents in tables, plus partitioned event logs.

The interface is what a shared (Redis) store can offer too: get/put/put_if_absent/delete/all on
tables, and events appended to named partitions, read back one partition at a time. This module
holds the interface and its errors only, so a store and its callers import it without pulling in
any backend. ``TinyDbStore`` (lb_core/store_tinydb.py) is the embedded default; its journal is in
lb_core/store_journal.py, its event partitions in lb_core/store_events.py and the crash-safe file
helpers in lb_core/durable_files.py. ``MemoryStore`` (lb_core/store_memory.py) is the reference
for the contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lb_core.config import Config

Doc = dict[str, Any]


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
    """The store ``config.store`` names (not opened yet): the embedded TinyDB file or a shared Redis.

    Each backend is imported only when used, so this interface pulls in none."""
    if config.store.backend == "redis":
        from lb_core.store_redis import RedisStore

        assert config.store.url is not None  # the config requires it for this backend
        return RedisStore(config.store.url, config.store.prefix, timeout_s=config.store_timeout_s,
                          connect_timeout_s=config.backend_connect_timeout_s,
                          max_connections=config.store.max_connections)
    from lb_core.store_tinydb import TinyDbStore

    return TinyDbStore(config.store_path)
