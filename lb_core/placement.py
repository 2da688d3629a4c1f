"""Where a new meeting goes: the balancer's order of servers for one create, from the caller's request.

Adds to ``balancer.place`` what only a request knows: the requester's location (X-Forwarded-For only
from ``geo.trusted_proxies``), ``preferredServer``, and the servers where another integration runs a
meeting with the same ID.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from lb_core.api import Call
from lb_core.balancer import LOWEST_LOAD, Placement, place, polled_load
from lb_core.config import Config
from lb_core.meetings import MeetingRegistry
from lb_core.pool import Pool

Locate = Callable[[str], tuple[float, float] | None]


class Placer:
    def __init__(self, config: Config, pool: Pool, meetings: MeetingRegistry, locate: Locate | None = None) -> None:
        self.config = config
        self.pool = pool
        self.meetings = meetings
        self.locate = locate
        self._trusted_proxies = [ipaddress.ip_network(p, strict=False) for p in config.geo.trusted_proxies]

    def place(self, call: Call, exclude: frozenset[str] = frozenset()) -> Placement:
        meeting_id = call.param("meetingID")
        # Another integration's meeting with the same ID must not share a server with this one.
        others = frozenset(self.meetings.holders_of(meeting_id)) | exclude
        return place(
            self.pool, self.config.balancer, time.time(),
            preferred=call.param("preferredServer") or None,
            requester=self.requester_location(call),
            nearby_km=self.config.geo.nearby_km,
            exclude=others,
        )

    async def place_shared(self, call: Call) -> Placement:
        """``place``, and when several processes share the pool, the choice counts every process's creates
        that no poll has seen yet, picked and counted in one atomic step (``Cluster.claim``)."""
        placement = self.place(call)
        cluster = self.meetings.cluster
        if cluster is None or not placement.order:
            return placement
        balancer = self.config.balancer
        # Only the servers equal to the first by preference and distance compete on load.
        contenders = placement.order if placement.reason == LOWEST_LOAD else placement.order[:1]
        chosen = await cluster.claim([(s, polled_load(s, balancer) / s.config.weight) for s in contenders],
                                     call.param("meetingID"), balancer.meeting_cost + balancer.meeting_size)
        if chosen is not placement.order[0]:
            placement.order = [chosen, *(s for s in placement.order if s is not chosen)]
            placement.reason += ", counting the creates of every bbb-lb process"
        return placement

    def requester_location(self, call: Call) -> tuple[float, float] | None:
        if self.locate is None or not self.config.geo.prefer_nearby:
            return None
        address = call.client_ip
        if call.forwarded_for and self._trusted(call.client_ip):
            address = call.forwarded_for.split(",")[0].strip()
        return self.locate(address)

    def _trusted(self, address: str) -> bool:
        """Whether X-Forwarded-For from this peer is believed (geo.trusted_proxies)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted_proxies)
