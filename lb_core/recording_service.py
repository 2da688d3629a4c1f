"""Recordings that outlive their servers: the index kept in step with the servers, imports, and changes.

- **sync** (always on): every ``recordings.sync_interval_s`` each live server's getRecordings is read,
  page by page, and upserted into the index; then the changes made through the LB while that server
  was away (``pending``) are pushed to it. A server that goes down or is removed leaves its recordings
  listed.
- **import**: an archive shipped by a server (upload, or ``bbb-lb recordings import``) is checked and
  moved into ``recordings.storage`` off the event loop, then indexed; a failure leaves nothing behind.
  An operator's import is a job (``start_import``): answered at once with its id, then asked after until
  it is done, so an archive of any size imports without an HTTP request waiting on it.
- **changes**: publish, unpublish, delete and update change the index (and the stored files), then go
  to the origin server when it is alive; they never need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import jwt

from lb_core import bbbxml, recording_archive
from lb_core.backend import BackendClient, BackendError
from lb_core.config import Config
from lb_core.pool import Pool, Server
from lb_core.query import encode_value
from lb_core.recording_archive import ArchiveRefused
from lb_core.recording_index import RecordingIndex, now_ms

log = logging.getLogger("bbb_lb.recordings")

SYNC_PAGE = 100
SYNC_MAX_PAGES = 10_000
UPLOAD_TOKEN_MAX_AHEAD_S = 600
MAX_AUTHORIZATION_BYTES = 4096
IMPORT_JOBS_RUNNING_MAX = 1000  # imports under way at once (they queue for the one import worker)
IMPORT_JOBS_KEPT = 1000  # finished jobs kept to be asked after, newest


def lower_priority() -> None:
    """The import worker runs on CPU the API process leaves over: SCHED_IDLE, so the event loop, woken by a
    join, takes a core from it at once (a nice level only shares the core out over the next milliseconds,
    which is what raised join p99 during imports); nice 19 where SCHED_IDLE is not available. It is never
    starved: SCHED_IDLE still gets a small share of a fully busy host."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class UploadRefused(Exception):
    """An upload that is not accepted: ``status`` and ``key`` for the answer, the message for the uploader."""

    def __init__(self, status: int, key: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.key = key


class Recordings:
    def __init__(self, config: Config, pool: Pool, backend: BackendClient, index: RecordingIndex,
                 on_imported: Any = None) -> None:
        self.config = config
        self.settings = config.recordings
        self.pool = pool
        self.backend = backend
        self.index = index
        self.on_imported = on_imported  # async (doc) -> None: recording-ready callbacks
        self._task: asyncio.Task[None] | None = None
        self._syncing: dict[str, asyncio.Lock] = {}
        self.last_sync: dict[str, dict[str, Any]] = {}
        self._worker: ProcessPoolExecutor | None = None  # started on the first import
        self._soon: set[asyncio.Task[int]] = set()
        self.jobs: dict[str, dict[str, Any]] = {}  # import jobs by id, oldest first
        self._job_tasks: set[asyncio.Task[None]] = set()
        # Several processes on one Redis: only the poller (lease holder) reads the servers' recordings.
        self.leads: Callable[[], bool] = lambda: True

    @property
    def storage(self) -> Path | None:
        return Path(self.settings.storage) if self.settings.storage else None

    @property
    def spool_dir(self) -> Path | None:
        if self.settings.spool:
            return Path(self.settings.spool)
        return self.storage / ".spool" if self.storage is not None else None

    # --- sync ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sync_forever(), name="bbb-lb recordings sync")

    async def stop(self) -> None:
        for task in [*self._soon, *self._job_tasks]:
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._worker is not None:
            worker, self._worker = self._worker, None
            await asyncio.to_thread(worker.shutdown, True, cancel_futures=True)

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
        for doc in await self.index.purge():
            if doc.get("stored_formats") and self.storage is not None:
                await asyncio.to_thread(recording_archive.remove_deleted, self.storage, doc["record_id"])

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

    # --- changes ------------------------------------------------------------------------------------

    async def change(self, docs: list[dict[str, Any]], *, state: str | None = None,
                     meta: dict[str, str] | None = None) -> None:
        """Change the index and the stored files, then tell each live origin (the index keeps what it missed)."""
        for doc in docs:
            if state is not None and doc.get("stored_formats") and self.storage is not None:
                await asyncio.to_thread(recording_archive.place, self.storage, doc["record_id"], state)
            if meta and doc.get("stored_formats") and self.storage is not None:
                await asyncio.to_thread(recording_archive.rewrite_meta, self.storage, doc["record_id"], meta)
            updated = await self.index.change(doc, state=state, meta=meta)
            server = self.pool.get(updated.get("server", ""))
            if server is not None and server.healthy:
                await self.push(server, updated)

    # --- imports ------------------------------------------------------------------------------------

    async def _in_worker(self, function: Any, *args: Any) -> Any:
        """Tar work in a worker process of its own: a 100 MB import must not take the GIL from the API."""
        if self._worker is None:
            self._worker = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=lower_priority)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, function, *args)
        except BrokenProcessPool:
            self._worker = None
            raise ArchiveRefused("the import worker died; try again") from None

    def authorize(self, authorization: str) -> Server:
        """The server an upload comes from: ``Bearer <JWT>``, HS256 with its own secret, ``sub`` its name,
        ``exp`` at most 10 minutes ahead. Cheap and bounded: runs before the body is read."""
        if self.storage is None:
            raise UploadRefused(404, "notFound", "Recording uploads are not enabled (recordings.storage).")
        if len(authorization) > MAX_AUTHORIZATION_BYTES or not authorization.startswith("Bearer "):
            raise UploadRefused(401, "unauthorized", "Authorization: Bearer <JWT> is required.")
        token = authorization[len("Bearer "):].strip()
        try:
            claims = jwt.decode(token, options={"verify_signature": False}, algorithms=["HS256"])
        except jwt.PyJWTError:
            raise UploadRefused(401, "unauthorized", "The token is not a JWT.") from None
        name = claims.get("sub")
        server = self.pool.get(name) if isinstance(name, str) else None
        if server is None:
            raise UploadRefused(401, "unauthorized", "The token does not name a known server.")
        try:
            claims = jwt.decode(token, server.config.secret, algorithms=["HS256"],
                                options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise UploadRefused(401, "unauthorized", "The token has expired.") from None
        except jwt.PyJWTError:
            raise UploadRefused(401, "unauthorized", "The token is not signed by that server.") from None
        if float(claims["exp"]) > time.time() + UPLOAD_TOKEN_MAX_AHEAD_S + 5:
            raise UploadRefused(401, "unauthorized", "The token's exp is more than 10 minutes ahead.")
        return server

    def new_spool_file(self) -> Path:
        spool = self.spool_dir
        assert spool is not None
        spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        return spool / f"upload-{os.getpid()}-{time.monotonic_ns()}.tar"

    async def import_file(self, path: str | os.PathLike[str], server: str | None = None) -> dict[str, Any]:
        """Import one archive; answers the outcome (``result``: imported, replaced, refused) and never raises."""
        entry: dict[str, Any] = {"at": time.time(), "file": os.path.basename(str(path)), "server": server or ""}
        storage = self.storage
        try:
            if storage is None:
                raise ArchiveRefused("recordings.storage is not set")
            imported = await self._in_worker(recording_archive.import_archive, path, storage,
                                             self.settings.max_upload_bytes)
        except ArchiveRefused as exc:
            entry.update(result="refused", reason=str(exc))
            log.warning("recording archive %s refused: %s", entry["file"], exc)
            self.index.note_import(entry)
            return entry
        except OSError as exc:
            entry.update(result="refused", reason=f"storage: {exc.strerror or exc}")
            log.error("recording archive %s not imported: %s", entry["file"], exc)
            self.index.note_import(entry)
            return entry
        doc = imported.doc
        refused = self._refuse_foreign(doc, server)
        if refused:
            await asyncio.to_thread(recording_archive.discard, storage, imported.record_id)
            entry.update(result="refused", reason=refused, record_id=imported.record_id)
            self.index.note_import(entry)
            return entry
        current = self.index.get(imported.record_id)
        doc["integration"] = self._owner(doc)
        doc.update(source="import", deleted_at=None, pending={},
                   server=server or (current or {}).get("server", ""))
        if current is not None and current.get("pending"):
            doc["pending"] = current["pending"]
            doc["state"] = current.get("state", doc["state"])  # the index's own change stands
            doc["metadata"] = {**doc["metadata"], **current.get("metadata", {})}
        doc["published"] = doc["state"] == "published"
        try:
            if doc["state"] != "published":  # only published recordings are where a web server may serve them
                await asyncio.to_thread(recording_archive.place, storage, imported.record_id, doc["state"])
            await self.index.save(doc)
        except Exception as exc:
            await asyncio.to_thread(recording_archive.discard, storage, imported.record_id)
            entry.update(result="refused", reason=f"the index could not be written: {exc}")
            self.index.note_import(entry)
            return entry
        result = "replaced" if imported.replaced else "imported"
        entry.update(result=result, record_id=imported.record_id, files=imported.files, bytes=imported.bytes,
                     integration=doc["integration"])
        self.index.note_import(entry)
        log.info("recording %s %s from %s (%d files, %d bytes)", imported.record_id, result,
                 server or entry["file"], imported.files, imported.bytes)
        if self.on_imported is not None and not imported.replaced:
            await self.on_imported(doc)
        return entry

    def start_import(self, path: str, server: str | None = None) -> dict[str, Any]:
        """Start importing one archive; answers its job at once (``import_job`` tells how it goes).

        The same file asked for again while its import runs gets that job, not a second import."""
        real = os.path.realpath(path)
        for job in self.jobs.values():
            if job["path"] == real and job["state"] == "running":
                return dict(job)
        if sum(job["state"] == "running" for job in self.jobs.values()) >= IMPORT_JOBS_RUNNING_MAX:
            raise UploadRefused(429, "tooManyImports", f"{IMPORT_JOBS_RUNNING_MAX} imports are under way; try later")
        try:
            size = os.path.getsize(real)
        except OSError:
            size = 0
        job = {"job": secrets.token_hex(8), "path": real, "file": os.path.basename(real), "bytes": size,
               "state": "running", "started_at": time.time(), "finished_at": None, "result": None}
        self.jobs[job["job"]] = job
        task = asyncio.create_task(self._run_job(job, server), name=f"bbb-lb import {job['file']}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        self._forget_old_jobs()
        return dict(job)

    async def _run_job(self, job: dict[str, Any], server: str | None) -> None:
        try:
            job["result"] = await self.import_file(job["path"], server)
        except Exception as exc:  # import_file answers refusals itself: this is a bug, told to the operator
            log.exception("import of %s failed", job["file"])
            job["result"] = {"result": "refused", "reason": f"internal error: {type(exc).__name__}"}
        finally:
            job["state"], job["finished_at"] = "done", time.time()

    def import_job(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return {**job, "elapsed_s": round((job["finished_at"] or time.time()) - job["started_at"], 3)}

    def _forget_old_jobs(self) -> None:
        finished = [k for k, job in self.jobs.items() if job["state"] == "done"]
        for key in finished[:max(0, len(finished) - IMPORT_JOBS_KEPT)]:
            del self.jobs[key]

    def _owner(self, doc: dict[str, Any]) -> str:
        owner = doc.get("metadata", {}).get("mconflb-institution")
        if owner:
            return str(owner)
        created = self.index.created_on(doc.get("internal_meeting_id", ""))
        return created[1] if created is not None else "default"

    def _refuse_foreign(self, doc: dict[str, Any], server: str | None) -> str:
        """A server may ship only recordings of meetings it held, when the LB knows where they were."""
        if server is None:
            return self._refuse_deleted(doc)
        created = self.index.created_on(doc.get("internal_meeting_id", ""))
        if created is not None and created[0] != server:
            return f"the recording's meeting ran on {created[0]!r}, not on {server!r}"
        current = self.index.get(doc["record_id"])
        if current is not None and current.get("server") not in ("", None, server):
            return f"the recording is indexed from {current['server']!r}, not {server!r}"
        return self._refuse_deleted(doc)

    def _refuse_deleted(self, doc: dict[str, Any]) -> str:
        """A recording deleted through the LB stays deleted: a late upload does not bring it back."""
        current = self.index.get(doc["record_id"])
        if current is not None and current.get("state") == "deleted":
            return "the recording was deleted"
        return ""

    # --- operators ----------------------------------------------------------------------------------

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
                "last_imports": list(reversed(self.index.last_imports[-10:])), "last_sync": self.last_sync,
                "at": now_ms()}
