"""/api/recordings: the recordings index for operators (list, show, publish/unpublish/delete, import).

An import from the CLI is a job (``/api/recordings/imports``): answered at once, asked after until done,
so no archive is too large for a request timeout. ``/api/recordings/import`` answers when it is done."""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from lb_core.admin_http import BadRequest, Route, Routes, json_response, read_object
from lb_core.controls import NotFound
from lb_core.recording_imports import UploadRefused


class RecordingRoutes(Routes):
    """Each route asks the running LB's ``Recordings`` (list, show, change) or ``RecordingImports``."""

    def routes(self) -> list[Route]:
        return [
            ("GET", "/api/recordings", self.list_all),
            ("GET", "/api/recordings/{id}", self.show),
            ("POST", "/api/recordings/import", self.import_file),
            ("POST", "/api/recordings/imports", self.start_import),
            ("GET", "/api/recordings/imports/{job}", self.import_job),
            ("POST", "/api/recordings/{id}/{action:publish|unpublish|delete}", self.action),
        ]

    async def list_all(self, request: web.Request) -> web.Response:
        q = request.query
        limit = q.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            raise BadRequest("limit: expected 1 to 10000")
        return json_response(self.running.recordings().list_for_operator(
            state=q.get("state", ""), integration=q.get("integration", ""), meeting_id=q.get("meeting", ""),
            limit=int(limit)))

    async def show(self, request: web.Request) -> web.Response:
        recordings = self.running.recordings()
        doc = recordings.index.get(request.match_info["id"])
        if doc is None:
            raise NotFound(f"no recording {request.match_info['id']!r}")
        return json_response(recordings.summary(doc))

    async def action(self, request: web.Request) -> web.Response:
        try:
            return json_response(await self.running.recordings().operator_action(request.match_info["id"],
                                                                                request.match_info["action"]))
        except KeyError:
            raise NotFound(f"no recording {request.match_info['id']!r}") from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    async def import_file(self, request: web.Request) -> web.Response:
        """Import an archive from a path the LB can read (a spool directory shared with the BBB servers)."""
        path, server = _import_request(read_object(await request.read()))
        return json_response(await self.running.recording_imports().import_file(path, server))

    async def start_import(self, request: web.Request) -> web.Response:
        """Start an import job: 202 with its id at once; ``GET /api/recordings/imports/{job}`` until done."""
        path, server = _import_request(read_object(await request.read()))
        try:
            return json_response(self.running.recording_imports().start_import(path, server), status=202)
        except UploadRefused as exc:
            return json_response({"error": str(exc)}, status=exc.status)

    async def import_job(self, request: web.Request) -> web.Response:
        job = self.running.recording_imports().import_job(request.match_info["job"])
        if job is None:
            raise NotFound(f"no import job {request.match_info['job']!r} (bbb-lb restarted since?)")
        return json_response(job)


def _import_request(body: dict[str, Any]) -> tuple[str, str | None]:
    """The archive's path (a file on the bbb-lb host) and the server it claims to come from."""
    path = body.get("path")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise BadRequest("path: expected the archive's path on the bbb-lb host")
    if not os.path.isfile(path):
        raise BadRequest(f"path: no such file {path!r} on the bbb-lb host")
    server = body.get("server")
    return path, server if isinstance(server, str) else None
