"""Where each recording is: recordID -> (server, owning integration), learned from creates and listings.

Bounded (an LRU of ``RECORDINGS_CACHE_MAX``): a recording not in it is looked up on every server.
"""

from __future__ import annotations

from lb_core.lru import LruCache
from lb_core.pool import Pool

RECORDINGS_CACHE_MAX = 50_000


class RecordingIndex:
    def __init__(self, pool: Pool, limit: int | None = None) -> None:
        self.pool = pool
        self._where: LruCache[str, tuple[str, str]] = LruCache(limit or RECORDINGS_CACHE_MAX)

    def learn(self, record_id: str, server: str, owner: str) -> None:
        self._where[record_id] = (server, owner)

    def server_for(self, record_id: str, owner: str) -> str | None:
        """The server holding ``owner``'s recording, if known and still in the pool; never another's."""
        server, holder = self._where.get(record_id, ("", "")) or ("", "")
        return server if holder == owner and self.pool.get(server) is not None else None

    def __len__(self) -> int:
        return len(self._where)
