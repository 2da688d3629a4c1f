"""Where a new meeting goes, and why: every decision comes with the candidates' scores.

The load formula lives here too (``load``, ``polled_load``, ``predicted_load``): a server's load in
participant units, from the counts ``pool.Server`` keeps and the costs of ``balancer:`` in the config.
A server's score is its load per weight; the lowest score takes the meeting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lb_core.config_sections import BalancerConfig

if TYPE_CHECKING:
    from lb_core.pool import MeetingLoad, Pool, Server


@dataclass(slots=True)
class Placement:
    """Servers to try in order (first is the choice, the rest are fallbacks) and the reasoning."""

    order: list[Server]
    reason: str
    scores: list[dict[str, Any]] = field(default_factory=list)

    def explain(self) -> dict[str, Any]:
        return {
            "chosen": self.order[0].name if self.order else None,
            "reason": self.reason,
            "candidates": self.scores,
        }


# --- the load formula -------------------------------------------------------------------------------

def predicted_load(server: Server, balancer: BalancerConfig, now: float) -> float:
    """Participants that new meetings are expected to bring and have not brought yet.

    A meeting no poll has seen yet counts ``meeting_size``, fading linearly over ``warmup_s``
    (summed in O(1) from the count and the sum of creation times); one a poll has seen counts
    what is still missing of that expectation, as of that poll (``missing_expected``).
    """
    if balancer.warmup_s <= 0:
        return 0.0
    count = len(server.unseen_creates)
    rate = balancer.meeting_size / balancer.warmup_s
    unseen = balancer.meeting_size * count - rate * (count * now - server.unseen_created_sum)
    return server.missing_expected + max(0.0, unseen)


def missing_expected(recent_creates: Mapping[str, float], meetings: Mapping[str, MeetingLoad], started: float,
                     balancer: BalancerConfig) -> float:
    """What the new meetings a poll (begun at ``started``) saw had not brought yet of their expected size."""
    if balancer.warmup_s <= 0:
        return 0.0
    missing = 0.0
    for meeting_id, created in recent_creates.items():
        if meeting_id in meetings:
            expected = balancer.meeting_size * (1.0 - max(0.0, started - created) / balancer.warmup_s)
            missing += max(0.0, expected - meetings[meeting_id].participants)
    return missing


def polled_load(server: Server, balancer: BalancerConfig) -> float:
    """The load as polls saw it, without the meetings created since (several processes count those
    together: ``cluster.Cluster.claim``)."""
    return (
        len(server.meetings) * balancer.meeting_cost
        + server.participants
        + server.voice * balancer.voice_cost
        + server.video * balancer.video_cost
        + server.missing_expected
    )


def load(server: Server, balancer: BalancerConfig, now: float) -> float:
    """Load in participant units: meetings, people, their media, and what is expected."""
    return (
        server.meeting_count * balancer.meeting_cost
        + server.participants
        + server.voice * balancer.voice_cost
        + server.video * balancer.video_cost
        + predicted_load(server, balancer, now)
    )


# --- placing a new meeting ------------------------------------------------------------------------------

LOWEST_LOAD = "lowest load per weight"


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def exclusion_reason(server: Server) -> str | None:
    if server.draining:
        return "draining"
    if not server.healthy:
        return f"status {server.status.name.lower()}"
    if server.is_disabled:
        return server.over_limits() or "disabled"
    if (limit := server.over_limits()) is not None:
        return limit
    return None


def server_location(server: Server) -> tuple[float, float] | None:
    try:
        return float(server.geoloc["latitude"]), float(server.geoloc["longitude"])
    except (KeyError, TypeError, ValueError):
        return None


def place(
    pool: Pool,
    balancer: BalancerConfig,
    now: float,
    *,
    preferred: str | None = None,
    requester: tuple[float, float] | None = None,
    nearby_km: float = 300.0,
    exclude: frozenset[str] = frozenset(),
) -> Placement:
    scores: list[dict[str, Any]] = []
    ranked: list[tuple[int, float, str, Server]] = []
    distances: dict[str, float] = {}
    if requester is not None:
        for server in pool:
            location = server_location(server)
            if location is not None:
                distances[server.name] = distance_km(requester, location)
    for server in pool:
        server_load = load(server, balancer, now)
        score = server_load / server.config.weight
        reason = "excluded by the caller" if server.name in exclude else exclusion_reason(server)
        entry: dict[str, Any] = {"server": server.name, "load": round(server_load, 2),
                                 "weight": server.config.weight, "score": round(score, 3)}
        if server.name in distances:
            entry["distance_km"] = round(distances[server.name], 1)
        if reason:
            entry["excluded"] = reason
        else:
            ranked.append((0, score, server.name, server))
        scores.append(entry)
    if not ranked:
        return Placement([], "no server can take a new meeting", scores)

    reason = LOWEST_LOAD
    if distances:
        reachable = [distances[s.name] for _, _, _, s in ranked if s.name in distances]
        if reachable:
            nearest = min(reachable)
            ranked = [
                (0 if distances.get(s.name, math.inf) <= nearest + nearby_km else 1, score, name, s)
                for _, score, name, s in ranked
            ]
            reason = f"nearest to the requester (within {nearby_km:g} km of the closest), then lowest load per weight"
    if preferred:
        wanted = pool.find(preferred)
        if wanted is not None and any(s is wanted for *_, s in ranked):
            ranked = [(-1 if s is wanted else group, score, name, s) for group, score, name, s in ranked]
            reason = f"preferredServer={preferred}"
        else:
            reason += f" (preferredServer={preferred} ignored: unknown or unavailable)"
    ranked.sort(key=lambda item: (item[0], item[1], item[2]))
    return Placement([s for *_, s in ranked], reason, scores)
