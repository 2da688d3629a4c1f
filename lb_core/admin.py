"""The admin listener: operator controls (JSON under /api/), /health, /metrics and a live dashboard.

It is a separate aiohttp listener, not part of the BBB API listener, so it can bind to loopback or a
management network only (127.0.0.1 unless ``admin.host`` says otherwise). This file only binds it and
puts it together; each route lives with its resource:

- ``admin_auth``: the token and the dashboard's cookie (the guard of every /api/ route);
- ``admin_http``: JSON bodies and answers, errors as JSON, the security headers;
- ``admin_status``: /health, /metrics, /api/status;
- ``admin_dashboard``: /dashboard, its files, /api/dashboard, /api/series and the plots' history;
- ``admin_controls``: /api/servers, /api/integrations, /api/rules;
- ``admin_recordings``: /api/recordings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from lb_core.admin_auth import AdminAuth
from lb_core.admin_controls import IntegrationRoutes, RuleRoutes, ServerRoutes
from lb_core.admin_dashboard import Dashboard
from lb_core.admin_http import Route, Running, errors_as_json
from lb_core.admin_recordings import RecordingRoutes
from lb_core.admin_status import StatusRoutes
from lb_core.config_sections import AdminConfig
from lb_core.metrics import LbMetrics
from lb_core.series import Series
from lb_core.service import LoadBalancer

log = logging.getLogger("bbb_lb.admin")

MAX_BODY = 64 * 1024


class AdminServer:
    """The admin application on its own listener; ``get_lb`` answers the running LB (None once stopped)."""

    def __init__(self, admin: AdminConfig, get_lb: Callable[[], LoadBalancer | None], metrics: LbMetrics) -> None:
        assert admin.port is not None and admin.token, "admin.port and admin.token are checked by the config"
        self.admin = admin
        self.port: int = admin.port
        self.auth = AdminAuth(admin.token)
        running = Running(get_lb)
        self.series = Series(admin.series_resolution_s, admin.series_points)
        metrics.series = self.series  # fed by the answer path from now on
        self.dashboard = Dashboard(running, self.auth, metrics, self.series)
        self.parts = (self.dashboard, StatusRoutes(running, metrics), ServerRoutes(running),
                      IntegrationRoutes(running), RecordingRoutes(running), RuleRoutes(running))
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    def routes(self) -> list[Route]:
        """Every route of the listener: (method, path, handler)."""
        return [route for part in self.parts for route in part.routes()]

    def app(self) -> web.Application:
        # errors_as_json outside the guard: a refusal gets the security headers too.
        app = web.Application(middlewares=[errors_as_json, self.auth.guard], client_max_size=MAX_BODY)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        return app

    async def start(self) -> None:
        """Bind the listener; raises OSError when the address is taken."""
        await self.dashboard.load_files()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.admin.host, self.admin.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._ticker = asyncio.create_task(self.dashboard.tick_series(), name="bbb-lb series")
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("admin listener on http://%s:%d/ (dashboard at /dashboard, metrics at /metrics)",
                 self.admin.host, self.port)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
