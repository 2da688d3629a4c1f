"""The monitor on a pool shared by several processes (``store.backend: redis``): one polls, the others
take its view. The lease and the view itself live in ``lb_core.cluster``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from lb_core.cluster import Cluster, StopBudget, stop_task
from lb_core.pool import MeetingLoad, Server, Status
from lb_core.store import StoreUnavailable


def apply_view(server: Server, view: dict[str, Any], monitor: Any, balancer: Any) -> None:
    """Another process polled ``server``: take its view, as if this process had polled."""
    meetings = {m: MeetingLoad(*loads) for m, loads in view.get("meetings", {}).items()}
    server.record_poll_success(meetings, monitor, float(view.get("polled", time.time())), balancer)
    server.status = Status(int(view.get("status", int(Status.UNDEFINED))))
    server.consecutive_failures = int(view.get("failures", 0))
    server.consecutive_successes = int(view.get("successes", 0))
    server.last_error = str(view.get("error", ""))
    server.last_poll_at = float(view.get("polled", 0.0))
    server.poll_errors_total = int(view.get("errors", 0))
    server.voice_bridges = set(view.get("bridges", ()))


class SharedPoller:
    """Drives the monitor on a shared pool: the lease holder polls and publishes what it saw; the other
    processes take that view at each interval. Heartbeats and the lease run on their own beat, so a
    long poll never lets the lease lapse."""

    BEAT_S = 1.0

    def __init__(self, cluster: Cluster, monitor: Any, pool: Any, config: Any,
                 status: Callable[[], dict[str, Any]], after_view: Callable[[Server], None] | None = None) -> None:
        self.cluster = cluster
        self.after_view = after_view
        self.monitor = monitor
        self.pool = pool
        self.config = config
        self.status = status
        self._beat_task: asyncio.Task[None] | None = None
        self.rounds_led = 0
        self.views_applied = 0

    def start(self) -> None:
        self.monitor.round = self.round
        self._beat_task = asyncio.create_task(self._beat_forever(), name="bbb-lb-heartbeat")

    async def _beat_forever(self) -> None:
        while True:
            was_leader = self.cluster.leader
            if await self.cluster.hold_lease() and not was_leader:
                self.monitor.poll_soon()  # the new poller does not wait out an interval
            with contextlib.suppress(StoreUnavailable):
                await self.cluster.beat(self.status())
            await asyncio.sleep(self.BEAT_S)

    async def round(self) -> None:
        """One monitor round: poll (the lease holder) or take the poller's view (the others)."""
        if self.cluster.leader:
            await self.monitor.poll_all()
            self.rounds_led += 1
            servers = list(self.pool)
            await self.cluster.publish_pool(servers)
            for server in servers:
                await self.cluster.unplace(server.name, list(server.meetings))
                if server.consecutive_failures == 0:  # a server not answering keeps its bridges as they were
                    held = {r.voice_bridge for r in self.monitor.meetings.on_server(server.name) if r.voice_bridge}
                    await self.cluster.note_voice_bridges(server.name, server.voice_bridges | held)
            await self.cluster.forget_voice_bridges({server.name for server in servers})
            return
        view = await self.cluster.read_pool()
        if view is None:
            return
        for name, server_view_doc in view.get("servers", {}).items():
            server = self.pool.get(name)
            if server is not None:
                apply_view(server, server_view_doc, self.config.monitor, self.config.balancer)
                if self.after_view is not None:
                    self.after_view(server)
        self.views_applied += 1

    async def stop(self, budget: StopBudget | None = None) -> None:
        if self._beat_task is not None:
            await stop_task(self._beat_task, (budget or StopBudget()).step())
