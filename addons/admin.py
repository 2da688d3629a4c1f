"""Starts lb_core's admin listener beside the proxy, and feeds it per-request metrics."""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.lb import BbbLoadBalancer
from lb_core.admin import AdminServer
from lb_core.metrics import LbMetrics
from lb_core.trace import Handled

log = logging.getLogger("bbb_lb.admin")


class AdminListener:
    """Serves the admin API, /health, /metrics and the dashboard when ``admin.port`` is set."""

    def __init__(self, lb_addon: BbbLoadBalancer) -> None:
        self.lb_addon = lb_addon
        self.metrics = LbMetrics(lambda: self.lb_addon.lb)
        self.server: AdminServer | None = None
        lb_addon.on_answer.append(self._observe)

    def _observe(self, flow: http.HTTPFlow, handled: Handled, elapsed_ms: float) -> None:
        self.metrics.observe(flow, handled, elapsed_ms)

    async def running(self) -> None:
        config = self.lb_addon.config
        if config is None or config.admin.port is None or self.server is not None:
            return
        await self.lb_addon.ensure_started()
        server = AdminServer(config.admin, lambda: self.lb_addon.lb, self.metrics)
        try:
            await server.start()
        except OSError as exc:
            # Logged as an error: `bbb-lb run` then exits rather than run without its controls.
            log.error("admin listener cannot listen on %s:%s: %s", config.admin.host, config.admin.port,
                      exc.strerror or exc)
            return
        self.server = server
        if self.lb_addon.lb is not None:  # a port bound as 0 is known only now
            self.lb_addon.lb.note_own_listener(server.port)

    async def done(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
