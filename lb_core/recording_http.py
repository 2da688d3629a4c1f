"""The recording server's two HTTP doors on the API port: uploads from BBB servers, and playback.

- ``POST /bigbluebutton/lb/recordings``: a recording archive as the raw body, ``Authorization: Bearer
  <JWT>`` signed by the uploading server. The mitmproxy addon checks the token from the head and spools
  the body to a file as it arrives (``Request.spool``); in process the body may also come in memory.
- ``GET|HEAD <recordings public path>/<format>/<recordID>/<file>``: the stored files of published
  recordings, read-only, with content types and single byte ranges (video seeks).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lb_core import bbbxml
from lb_core.api import Answer, Request
from lb_core.recording_archive import SAFE_NAME
from lb_core.recording_imports import RecordingImports, UploadRefused
from lb_core.recording_index import RecordingIndex
from lb_core.trace import Trace

UPLOAD_PATH = "/bigbluebutton/lb/recordings"
# A whole file is answered only up to this size; a larger one is read in ranges (what players ask for).
MAX_WHOLE_FILE = 64 * 1024 * 1024
MAX_RANGE = 8 * 1024 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
EXTRA_TYPES = {".webm": "video/webm", ".m4v": "video/mp4", ".mp4": "video/mp4", ".vtt": "text/vtt",
               ".svg": "image/svg+xml", ".xml": "application/xml", ".json": "application/json",
               ".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".png": "image/png",
               ".jpg": "image/jpeg", ".ogg": "audio/ogg", ".opus": "audio/ogg"}


def _answer(status: int, key: str, message: str, **fields: object) -> Answer:
    body = bbbxml.response("SUCCESS" if status < 400 else "FAILED",
                           [("messageKey", key), ("message", message), *fields.items()])
    return Answer.xml(body, status)


class RecordingDoors:
    def __init__(self, imports: RecordingImports, index: RecordingIndex, public_url: str) -> None:
        self.imports = imports
        self.index = index
        self.prefix = urlsplit(public_url).path.rstrip("/") + "/"

    def handles(self, path: str) -> bool:
        return path == UPLOAD_PATH or (self.prefix != "/" and path.startswith(self.prefix))

    async def handle(self, request: Request, trace: Trace) -> Answer:
        if request.path == UPLOAD_PATH:
            trace.call = "recordingUpload"
            answer = await self.upload(request)
        else:
            trace.call = "playback"
            answer = await self.playback(request)
        trace.route = "local"
        trace.result = "SUCCESS" if answer.status < 400 else str(answer.status)
        return answer

    # --- uploads ------------------------------------------------------------------------------------

    async def upload(self, request: Request) -> Answer:
        spool = request.spool
        try:
            if request.method != "POST":
                raise UploadRefused(405, "unsupportedRequest", "Uploads are POSTed.")
            server = self.imports.authorize(request.headers.get("authorization", ""))
            if spool is None:
                if len(request.body) > self.imports.settings.max_upload_bytes:
                    raise UploadRefused(413, "requestTooLarge", "The archive is larger than recordings.max_upload_bytes.")
                spool = str(self.imports.new_spool_file())
                await asyncio.to_thread(_write_private, spool, request.body)
            outcome = await self.imports.import_file(spool, server.name)
        except UploadRefused as exc:
            return _answer(exc.status, exc.key, str(exc))
        finally:
            if spool is not None:  # freeing a GB file's blocks takes milliseconds: not on the event loop
                await asyncio.to_thread(_remove, spool)
        if outcome["result"] == "refused":
            return _answer(422, "archiveRefused", outcome["reason"])
        return _answer(200, outcome["result"], f"Recording {outcome['record_id']} {outcome['result']}.",
                       recordID=outcome["record_id"])

    # --- playback -----------------------------------------------------------------------------------

    async def playback(self, request: Request) -> Answer:
        if request.method not in ("GET", "HEAD"):
            answer = _answer(405, "unsupportedRequest", "Playback is read-only.")
            answer.headers["Allow"] = "GET, HEAD"
            return answer
        path = self._file_for(request.path)
        if path is None:
            return _answer(404, "notFound", "No such recording file.")
        size = path.stat().st_size
        content_type = EXTRA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] \
            or "application/octet-stream"
        headers = {"Content-Type": content_type, "Accept-Ranges": "bytes", "X-Content-Type-Options": "nosniff",
                   "Cache-Control": "public, max-age=3600"}
        wanted = request.headers.get("range", "")
        start, end, status = 0, size - 1, 200
        if wanted:
            match = _RANGE.fullmatch(wanted.strip())
            if match is None or (not match.group(1) and not match.group(2)):
                return Answer(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # the last N bytes
                start, end = max(0, size - int(match.group(2))), size - 1
            if start >= size or start > end:
                return Answer(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            end = min(end, start + MAX_RANGE - 1)  # a shorter range than asked: players ask for the rest
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        elif size > MAX_WHOLE_FILE:
            return _answer(413, "requestTooLarge", "Ask for this file in ranges, or serve playback with nginx.")
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Answer(status, b"", headers)
        body = await asyncio.to_thread(_read_range, path, start, length)
        return Answer(status, body, headers)

    def _file_for(self, url_path: str) -> Path | None:
        """The stored file a playback path names, only for a published recording and never outside it."""
        storage = self.imports.settings.storage_dir
        if storage is None:
            return None
        parts = [unquote(p) for p in url_path[len(self.prefix):].split("/")]
        if len(parts) < 2:
            return None
        fmt, record_id, rest = parts[0], parts[1], [p for p in parts[2:] if p]
        if not SAFE_NAME.fullmatch(fmt) or not SAFE_NAME.fullmatch(record_id):
            return None
        if any(p in (".", "..") or "\\" in p or "\x00" in p or p.startswith(".") for p in rest):
            return None
        doc = self.index.get(record_id)
        if doc is None or doc.get("state") != "published" or fmt not in (doc.get("stored_formats") or ()):
            return None
        base = storage / record_id / fmt
        target = base.joinpath(*rest) if rest else base
        if target.is_dir():
            target = target / "index.html"
        try:
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(base.resolve()) or not resolved.is_file():
            return None
        return resolved


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _read_range(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as source:
        source.seek(start)
        return source.read(length)
