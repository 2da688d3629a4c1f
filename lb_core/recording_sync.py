"""The recordings index kept in step with the servers, both ways.

Every ``recordings.sync_interval_s`` each live server's getRecordings is read, page by page, and upserted
into the index; then the changes made through the LB while that server was away (``pending``) are pushed
to it. A server that goes down or is removed leaves its recordings listed. A server's recording-ready
callback reads that server at once (``sync_soon``). Several processes on one Redis: only the poller
(``leads``) reads the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from lb_core import bbbxml, recording_archive
from lb_core.backend import BackendClient, BackendError
from lb_core.config import Config
from lb_core.pool import Pool, Server
from lb_core.query import encode_value
from lb_core.recording_index import RecordingIndex

log = logging.getLogger("bbb_lb.recordings")

SYNC_PAGE = 100
SYNC_MAX_PAGES = 10_000


class RecordingSync:
    """Reads the servers' recordings into the index, and pushes the index's changes back to their origin."""

    def __init__(self, config: Config, pool: Pool, backend: BackendClient, index: RecordingIndex,
                 leads: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.settings = config.recordings
        self.pool = pool
        self.backend = backend
        self.index = index
        self.leads: Callable[[], bool] = leads if leads is not None else (lambda: True)
        self._task: asyncio.Task[None] | None = None
        self._syncing: dict[str, asyncio.Lock] = {}
        self._soon: set[asyncio.Task[int]] = set()
        self.last_sync: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sync_forever(), name="bbb-lb recordings sync")

    async def stop(self) -> None:
        for task in self._soon:
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sync_forever(self) -> None:
        while True:
            try:
                if self.leads():
                    await self.sync_all()
            except Exception:  # one bad round must not end the sync
                log.exception("recordings sync failed")
            await asyncio.sleep(self.settings.sync_interval_s)

    async def sync_all(self) -> None:
        await asyncio.gather(*(self.sync_server(s) for s in list(self.pool) if s.healthy))
        storage = self.settings.storage_dir
        for doc in await self.index.purge():
            if doc.get("stored_formats") and storage is not None:
                await asyncio.to_thread(recording_archive.remove_deleted, storage, doc["record_id"])

    def sync_soon(self, server_name: str) -> None:
        """A server says it has a new recording (its recording-ready callback): read it into the index now."""
        server = self.pool.get(server_name)
        if server is None or not server.healthy:
            return
        task = asyncio.create_task(self.sync_server(server), name=f"bbb-lb recordings sync {server_name}")
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)

    async def sync_server(self, server: Server) -> int:
        """Read all of one server's recordings into the index, then push what it missed; answers how many."""
        lock = self._syncing.setdefault(server.name, asyncio.Lock())
        if lock.locked():
            return 0
        async with lock:
            seen = 0
            offset = 0
            previous_first: str | None = None
            for _ in range(SYNC_MAX_PAGES):
                query = f"state=any&offset={offset}&limit={SYNC_PAGE}"
                try:
                    reply = await self.backend.call(server.config, "getRecordings", query,
                                                    timeout_s=self.config.backend_timeout_s)
                    root = bbbxml.parse(reply.body)
                except (BackendError, bbbxml.XmlError) as exc:
                    self.last_sync[server.name] = {"at": time.time(), "error": str(exc)[:200], "seen": seen}
                    return seen
                if bbbxml.returncode(root) != "SUCCESS":
                    break
                nodes = root.findall("recordings/recording")
                first = nodes[0].findtext("recordID") if nodes else None
                if offset and first == previous_first:
                    break  # the server ignores offset/limit: this page is the last one again
                previous_first = first
                for node in nodes:
                    await self.index.synced(server.name, node)
                seen += len(nodes)
                # A server without pagination answers everything at once.
                if len(nodes) != SYNC_PAGE:
                    break
                offset += SYNC_PAGE
            self.last_sync[server.name] = {"at": time.time(), "seen": seen}
            for doc in self.index.pending_on(server.name):
                await self.push(server, doc)
            return seen

    async def push(self, server: Server, doc: dict[str, Any]) -> bool:
        """Send the index's pending change of one recording to its origin; True once it has all of it."""
        pending = doc.get("pending") or {}
        record_id = doc["record_id"]
        ok = True
        state = pending.get("state")
        if state is not None:
            if state == "deleted":
                call, query = "deleteRecordings", ""
            else:
                call, query = "publishRecordings", "&publish=" + ("true" if state == "published" else "false")
            if await self._tell(server, call, "recordID=" + encode_value(record_id) + query):
                await self.index.pushed(record_id, "state")
            else:
                ok = False
        meta = pending.get("meta")
        if meta:
            query = "recordID=" + encode_value(record_id) + "".join(
                f"&meta_{encode_value(k)}={encode_value(v)}" for k, v in sorted(meta.items()))
            if await self._tell(server, "updateRecordings", query):
                await self.index.pushed(record_id, "meta")
            else:
                ok = False
        return ok

    async def _tell(self, server: Server, call: str, query: str) -> bool:
        """True when the server took the change, or does not have the recording (nothing to keep in step)."""
        try:
            reply = await self.backend.call(server.config, call, query, timeout_s=self.config.backend_timeout_s)
            root = bbbxml.parse(reply.body)
        except (BackendError, bbbxml.XmlError):
            return False
        return bbbxml.returncode(root) == "SUCCESS" or bbbxml.text_of(root, "messageKey") == "notFound"
