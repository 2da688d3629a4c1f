"""/health, /metrics and /api/status: is this LB able to place meetings, and its counts.

/health and /metrics answer without the token: load balancers and Prometheus scrapers rarely carry one,
and neither shows anything secret (counts, server names, no URLs or secrets).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from lb_core.admin_http import Route, Routes, Running, json_response
from lb_core.balancer import exclusion_reason
from lb_core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lb_core.metrics import LbMetrics
from lb_core.pool import Status
from lb_core.service import LoadBalancer
from lb_core.store import StoreError


def lb_status(lb: LoadBalancer) -> dict[str, Any]:
    """The LB's own status plus counts over its servers, as /api/status and the dashboard show them."""
    servers = list(lb.pool)
    return {
        **lb.status(),
        "servers": len(servers),
        "servers_up": sum(1 for s in servers if s.status == Status.UP),
        "servers_usable": sum(1 for s in servers if exclusion_reason(s) is None),
        "servers_disabled": sum(1 for s in servers if s.is_disabled),
        "servers_draining": sum(1 for s in servers if s.draining),
        "participants": sum(s.participants for s in servers),
        "integrations": len(lb.integrations),
    }


async def with_nodes(lb: LoadBalancer) -> dict[str, Any]:
    """``lb_status``, and with several processes on one Redis, every live one (its last heartbeat)."""
    status = lb_status(lb)
    if lb.cluster is not None:
        try:
            status["nodes"] = await lb.cluster.nodes()
        except StoreError as exc:
            status["nodes"], status["nodes_error"] = [], str(exc)
    return status


def health(lb: LoadBalancer | None) -> tuple[int, dict[str, Any]]:
    """200 when new meetings can be placed; 503 with the reason otherwise (counts only, no names)."""
    if lb is None:
        return 503, {"status": "unavailable", "reason": "bbb-lb is not running"}
    servers = list(lb.pool)
    reasons = Counter(exclusion_reason(s) for s in servers)
    usable = reasons.pop(None, 0)
    counts = {"servers": len(servers), "servers_up": sum(1 for s in servers if s.status == Status.UP),
              "servers_usable": usable}
    if usable:
        return 200, {"status": "ok", **counts}
    if not servers:
        reason = "no servers configured"
    else:
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda r: str(r[0])))
        reason = f"no server can take new meetings ({why})"
    return 503, {"status": "unavailable", "reason": reason, **counts}


async def with_store_health(lb: LoadBalancer, status: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A store that does not answer (Redis down) makes the instance unhealthy: it can place no meeting."""
    problem = await lb.store.problem()
    payload = {**payload, "store": "unavailable" if problem else "ok"}
    if problem is None:
        return status, payload
    return 503, {**payload, "status": "unavailable", "reason": "the state store (Redis) is not reachable"}


class StatusRoutes(Routes):
    """/health, /metrics (both open) and /api/status."""

    def __init__(self, running: Running, metrics: LbMetrics) -> None:
        super().__init__(running)
        self.metrics = metrics

    def routes(self) -> list[Route]:
        return [("GET", "/health", self.health), ("GET", "/metrics", self.prometheus),
                ("GET", "/api/status", self.status)]

    async def health(self, request: web.Request) -> web.Response:
        lb = self.running.get_lb()
        status, payload = health(lb)
        if lb is not None:
            status, payload = await with_store_health(lb, status, payload)
        return json_response(payload, status)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def status(self, request: web.Request) -> web.Response:
        return json_response(await with_nodes(self.running.lb()))
