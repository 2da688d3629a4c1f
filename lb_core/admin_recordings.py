"""/api/recordings: the recordings index for operators (list, show, publish/unpublish/delete, import)."""

from __future__ import annotations

import os

from aiohttp import web

from lb_core.admin_http import BadRequest, Route, Routes, json_response, read_object
from lb_core.controls import NotFound


class RecordingRoutes(Routes):
    """Each route asks ``recording_service.Recordings`` of the running LB."""

    def routes(self) -> list[Route]:
        return [
            ("GET", "/api/recordings", self.list_all),
            ("GET", "/api/recordings/{id}", self.show),
            ("POST", "/api/recordings/import", self.import_file),
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
        body = read_object(await request.read())
        path = body.get("path")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise BadRequest("path: expected the archive's path on the bbb-lb host")
        if not os.path.isfile(path):
            raise BadRequest(f"path: no such file {path!r} on the bbb-lb host")
        server = body.get("server")
        return json_response(await self.running.recordings().import_file(path, server if isinstance(server, str)
                                                                           else None))
