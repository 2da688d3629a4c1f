"""Recordings that outlive their servers: changes made through the LB, and the operators' view.

The index (``recording_index``) is the truth. Publish, unpublish, delete and update change it (and the
stored files), then go to the origin server when it is alive; they never need it: the sync
(``recording_sync``) pushes what a server missed once it is back. Archives come in through
``recording_imports``; uploads and playback are served by ``recording_http``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lb_core import recording_archive
from lb_core.config_sections import RecordingsConfig
from lb_core.pool import Pool
from lb_core.recording_index import RecordingIndex, now_ms
from lb_core.recording_sync import RecordingSync


class Recordings:
    """Changes to recordings (integrations' calls, operators' actions) and what operators are shown of them."""

    def __init__(self, settings: RecordingsConfig, pool: Pool, index: RecordingIndex, sync: RecordingSync) -> None:
        self.settings = settings
        self.pool = pool
        self.index = index
        self.sync = sync

    async def change(self, docs: list[dict[str, Any]], *, state: str | None = None,
                     meta: dict[str, str] | None = None) -> None:
        """Change the index and the stored files, then tell each live origin (the index keeps what it missed)."""
        storage = self.settings.storage_dir
        for doc in docs:
            if state is not None and doc.get("stored_formats") and storage is not None:
                await asyncio.to_thread(recording_archive.place, storage, doc["record_id"], state)
            if meta and doc.get("stored_formats") and storage is not None:
                await asyncio.to_thread(recording_archive.rewrite_meta, storage, doc["record_id"], meta)
            updated = await self.index.change(doc, state=state, meta=meta)
            server = self.pool.get(updated.get("server", ""))
            if server is not None and server.healthy:
                await self.sync.push(server, updated)

    def summary(self, doc: dict[str, Any]) -> dict[str, Any]:
        """One recording as operators see it (admin API, ``bbb-lb recordings``)."""
        return {"record_id": doc["record_id"], "meeting_id": doc.get("meeting_id", ""),
                "integration": doc.get("integration", ""), "name": doc.get("name", ""),
                "state": doc.get("state", ""), "start_time": doc.get("start_time", 0),
                "end_time": doc.get("end_time", 0), "participants": doc.get("participants", 0),
                "server": doc.get("server", ""), "source": doc.get("source", ""),
                "stored_formats": doc.get("stored_formats") or [], "size": doc.get("size", 0),
                "pending": doc.get("pending") or {}, "metadata": doc.get("metadata", {}),
                "playback": [f.get("type", "") for f in doc.get("playback", [])]}

    def list_for_operator(self, *, state: str = "", integration: str = "", meeting_id: str = "",
                          limit: int = 100) -> list[dict[str, Any]]:
        docs = [d for d in self.index.documents()
                if (not state or d.get("state") == state) and (not integration or d.get("integration") == integration)
                and (not meeting_id or d.get("meeting_id") == meeting_id)]
        docs.sort(key=lambda d: (-int(d.get("start_time") or 0), d["record_id"]))
        return [self.summary(d) for d in docs[:max(1, limit)]]

    async def operator_action(self, record_id: str, action: str) -> dict[str, Any]:
        """publish, unpublish or delete one recording, as an integration's call would (origin told too)."""
        doc = self.index.get(record_id)
        if doc is None:
            raise KeyError(record_id)
        if doc.get("state") == "deleted":
            raise ValueError("the recording is deleted")
        state = {"publish": "published", "unpublish": "unpublished", "delete": "deleted"}[action]
        await self.change([doc], state=state)
        return self.summary(self.index.get(record_id) or doc)

    def status(self) -> dict[str, Any]:
        return {"counts": self.index.counts(), "total": len(self.index),
                "last_imports": list(reversed(self.index.last_imports[-10:])), "last_sync": self.sync.last_sync,
                "at": now_ms()}
