"""The live dashboard: its page and files, the data it polls, and the plots' history (``Series``).

The page is served to whoever shows the token once (``?token=``, traded for a read-only cookie) and
loads only its own files (a strict Content-Security-Policy); its data are /api/ routes like any other.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

from aiohttp import web

from lb_core.admin_auth import COOKIE, AdminAuth
from lb_core.admin_http import BadRequest, Route, Running, json_response
from lb_core.admin_status import with_nodes
from lb_core.metrics import LbMetrics
from lb_core.series import Series

log = logging.getLogger("bbb_lb.admin")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"dashboard.html": "text/html", "dashboard.js": "text/javascript", "plots.js": "text/javascript",
                "dashboard.css": "text/css"}
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                 "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
UNAUTHORISED_PAGE = (b"<!doctype html><meta charset=utf-8><title>bbb-lb: sign in</title>"
                     b"<p>Open <code>/dashboard?token=&lt;admin.token&gt;</code> to see the dashboard.</p>")


SINCE = re.compile(r"\d{1,15}(\.\d{1,17})?")  # a time of /api/series: Unix seconds, as its "times" give them


def since_of(request: web.Request) -> float | None:
    """The ``since`` of /api/series, if given: one time in Unix seconds, else a 400 naming the parameter."""
    given = request.query.getall("since", [])
    if not given:
        return None
    if len(given) > 1 or not SINCE.fullmatch(given[0]):
        raise BadRequest("since: must be one time in Unix seconds (a number such as 1764460800.5), "
                         "the last of the times already held")
    return float(given[0])


class Dashboard:
    """The page, its files and its data routes."""

    def __init__(self, running: Running, auth: AdminAuth, metrics: LbMetrics, series: Series) -> None:
        self.running = running
        self.auth = auth
        self.metrics = metrics
        self.series = series
        self._static: dict[str, bytes] = {}

    async def load_files(self) -> None:
        """Read the page's files once, off the event loop."""
        self._static = await asyncio.to_thread(
            lambda: {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES})

    def routes(self) -> list[Route]:
        return [("GET", "/", self.root), ("GET", "/dashboard", self.page), ("GET", "/static/{file}", self.static),
                ("GET", "/api/dashboard", self.data), ("GET", "/api/series", self.series_data)]

    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/dashboard")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in STATIC_FILES or name.endswith(".html"):
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], headers={"Content-Type": STATIC_FILES[name] + "; charset=utf-8",
                                                              "Cache-Control": "no-cache"})

    async def page(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token is not None:
            if not self.auth.token_ok(token):
                return web.Response(status=401, body=UNAUTHORISED_PAGE, content_type="text/html")
            response = web.Response(status=303, headers={"Location": "/dashboard"})
            response.set_cookie(COOKIE, self.auth.cookie, httponly=True, samesite="Strict", path="/")
            return response
        if not (self.auth.cookie_ok(request) or self.auth.bearer_ok(request)):
            return web.Response(status=401, body=UNAUTHORISED_PAGE, content_type="text/html")
        return web.Response(body=self._static["dashboard.html"], content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": DASHBOARD_CSP})

    async def data(self, request: web.Request) -> web.Response:
        lb = self.running.lb()
        return json_response({"time": time.time(), "status": await with_nodes(lb),
                              "servers": self.running.server_controls().list_servers(),
                              "integrations": self.running.integration_controls().list_integrations(),
                              "recent": self.metrics.recent_calls(),
                              "recordings": lb.recordings.status() if lb.recordings is not None else None})

    async def series_data(self, request: web.Request) -> web.Response:
        """The plots' history: per server load, participants and meetings; per call the answers and FAILED
        answers per second (``rate(bbb_lb_requests_total[resolution])``); per integration its meetings and
        participants beside its limits. Each list is one value per entry of ``times``, oldest first.
        ``?since=<time>``: only the points after that time (see ``Series.snapshot``)."""
        self.running.lb()
        return json_response(self.series.snapshot(since_of(request)))

    async def tick_series(self) -> None:
        """Close a bucket of the plots' series on every step of the resolution's wall-clock grid (run as a task)."""
        while True:
            await asyncio.sleep(max(self.series.next_tick(time.time()) - time.time(), 0.0))
            try:
                self.series.tick(self.running.get_lb())
            except Exception:  # a bad sample must not stop the history for good
                log.exception("the dashboard's series could not be sampled")
