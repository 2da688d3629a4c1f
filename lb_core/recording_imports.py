"""Recording archives taken into the index: uploads from BBB servers and operators' imports.

An archive shipped by a server (upload, or ``bbb-lb recordings import``) is checked and moved into
``recordings.storage`` off the event loop, in a worker process of its own, then indexed; a failure leaves
nothing behind. An upload is authorised from its head alone (``authorize``), before its body is read. An
operator's import is a job (``start_import``): answered at once with its id, then asked after until it is
done, so an archive of any size imports without an HTTP request waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import jwt

from lb_core import recording_archive
from lb_core.config_sections import RecordingsConfig
from lb_core.pool import Pool, Server
from lb_core.recording_archive import ArchiveRefused
from lb_core.recording_index import RecordingIndex

log = logging.getLogger("bbb_lb.recordings")

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


class RecordingImports:
    """Takes archives into storage and the index: uploads authorised by their server's token, and import jobs."""

    def __init__(self, settings: RecordingsConfig, pool: Pool, index: RecordingIndex,
                 on_imported: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.index = index
        self.on_imported = on_imported  # recording-ready callbacks of a recording new to the index
        self._worker: ProcessPoolExecutor | None = None  # started on the first import
        self.jobs: dict[str, dict[str, Any]] = {}  # import jobs by id, oldest first
        self._job_tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in self._job_tasks:
            task.cancel()
        if self._worker is not None:
            worker, self._worker = self._worker, None
            await asyncio.to_thread(worker.shutdown, True, cancel_futures=True)

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
        if self.settings.storage_dir is None:
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
        spool = self.settings.spool_dir
        assert spool is not None
        spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        return spool / f"upload-{os.getpid()}-{time.monotonic_ns()}.tar"

    async def import_file(self, path: str | os.PathLike[str], server: str | None = None) -> dict[str, Any]:
        """Import one archive; answers the outcome (``result``: imported, replaced, refused) and never raises."""
        entry: dict[str, Any] = {"at": time.time(), "file": os.path.basename(str(path)), "server": server or ""}
        storage = self.settings.storage_dir
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
