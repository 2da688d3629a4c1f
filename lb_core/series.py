"""The last hour in memory, at a fixed resolution, for the dashboard's plots.

Prometheus keeps history for those who run it; the dashboard must show how load moved without one.
Every ``resolution_s`` a tick samples the pool and the integrations (the same numbers /metrics gives
at that moment) and closes the current bucket of API calls (counted on the answer path, from the
same call label as ``bbb_lb_requests_total`` and the same FAILED verdict as ``bbb_lb_requests_failed_total``). Each series is a ring of ``points``
values, so memory is bounded by the number of servers, integrations and known calls, never by the
traffic. A series whose key disappeared (a removed server) drops out once its window holds no value.

A page open for hours asks only for what it lacks: ``snapshot(since)`` answers the points after the
last time the page holds, with every series the window holds (a series absent from the answer has
left the window). When ``since`` is older than the window (the page fell behind, or bbb-lb restarted),
the answer is the whole window, marked ``"full": true``: the page replaces what it holds.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any

from lb_core.balancer import load

if TYPE_CHECKING:
    from lb_core.service import LoadBalancer

DEFAULT_RESOLUTION_S = 10.0
DEFAULT_POINTS = 360  # an hour at 10 s
SERVER_FIELDS = ("load", "participants", "meetings")
INTEGRATION_FIELDS = ("meetings", "participants", "max_meetings", "max_participants")
CALL_FIELDS = ("requests", "failed")


class Window:
    """Named series over the same ``points`` ticks; a value may be None (the key did not exist then)."""

    def __init__(self, points: int) -> None:
        self.points = points
        self.series: dict[tuple[str, str], deque[float | None]] = {}

    def append(self, values: dict[tuple[str, str], float | None], ticks_so_far: int) -> None:
        """One tick: every known series gets a value (None when absent now), new ones are padded with None."""
        for key in values.keys() - self.series.keys():
            self.series[key] = deque([None] * min(ticks_so_far, self.points), maxlen=self.points)
        for key, ring in list(self.series.items()):
            ring.append(values.get(key))
            if key not in values and all(v is None for v in ring):
                del self.series[key]

    def grouped(self, newest: int | None = None) -> dict[str, dict[str, list[float | None]]]:
        """``{name: {field: [values, oldest first]}}``: every value, or the ``newest`` ones only."""
        out: dict[str, dict[str, list[float | None]]] = {}
        for (name, field), ring in sorted(self.series.items()):
            values = list(ring) if newest is None else list(islice(ring, max(len(ring) - newest, 0), None))
            out.setdefault(name, {})[field] = values
        return out


class Series:
    """The dashboard's history: per server, per API call and per integration."""

    def __init__(self, resolution_s: float = DEFAULT_RESOLUTION_S, points: int = DEFAULT_POINTS) -> None:
        if not (resolution_s > 0 and math.isfinite(resolution_s)) or points < 2:
            raise ValueError("a series needs a positive resolution and at least two points")
        self.resolution_s = resolution_s
        self.points = points
        self.times: deque[float] = deque(maxlen=points)
        self.servers = Window(points)
        self.calls = Window(points)
        self.integrations = Window(points)
        self.ticks = 0
        # Calls answered since the last tick: {call: [answered, FAILED]}. Calls are bounded by the caller
        # (LbMetrics folds unknown ones into "other"), so this dict is too.
        self._pending: dict[str, list[int]] = {}
        self._last_tick: float | None = None

    def count(self, call: str, failed: bool) -> None:
        """An API answer (hot path: one dict look-up and an add); ``failed`` as bbb_lb_requests_failed_total."""
        counts = self._pending.get(call)
        if counts is None:
            counts = self._pending[call] = [0, 0]
        counts[0] += 1
        if failed:
            counts[1] += 1

    def next_tick(self, now: float) -> float:
        """When the next tick is due: on the wall-clock grid of the resolution, so points line up."""
        return (math.floor(now / self.resolution_s) + 1) * self.resolution_s

    def tick(self, lb: LoadBalancer | None, now: float | None = None) -> None:
        """Close the bucket ending now: sample gauges and turn the calls counted into rates per second."""
        now = time.time() if now is None else now
        elapsed = self.resolution_s if self._last_tick is None else max(now - self._last_tick, 1e-3)
        self._last_tick = now
        pending, self._pending = self._pending, {}
        calls: dict[tuple[str, str], float | None] = {}
        for call, (answered, failed) in pending.items():
            calls[(call, "requests")] = round(answered / elapsed, 4)
            calls[(call, "failed")] = round(failed / elapsed, 4)
        for name, _field in self.calls.series:  # a call seen in the window counts 0 rather than a gap
            for field in CALL_FIELDS:
                calls.setdefault((name, field), 0.0)
        self.times.append(round(now, 3))
        self.calls.append(calls, self.ticks)
        self.servers.append(dict(self._server_values(lb, now)), self.ticks)
        self.integrations.append(dict(self._integration_values(lb)), self.ticks)
        self.ticks += 1

    @staticmethod
    def _server_values(lb: LoadBalancer | None, now: float) -> Iterable[tuple[tuple[str, str], float | None]]:
        if lb is None:
            return
        balancer = lb.config.balancer
        for server in lb.pool:
            # The same readings as bbb_lb_server_load / _participants / _meetings.
            yield (server.name, "load"), round(load(server, balancer, now), 3)
            yield (server.name, "participants"), server.participants
            yield (server.name, "meetings"), server.meeting_count

    @staticmethod
    def _integration_values(lb: LoadBalancer | None) -> Iterable[tuple[tuple[str, str], float | None]]:
        if lb is None or lb.integration_controls is None:
            return
        for integration in lb.integration_controls.list_integrations():  # what bbb_lb_integration_* read
            for field in INTEGRATION_FIELDS:
                yield (integration["name"], field), integration[field]

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """What /api/series answers: the times (end of each bucket, Unix seconds) and the values, oldest first.

        With ``since`` (the newest time the asker holds), only the points after it, unless ``since`` is
        older than the window: then all of it, with ``full`` true (what is held must be replaced)."""
        times = list(self.times)
        full = since is None or not times or since < times[0]
        newest = None if full else len(times) - bisect_right(times, since)
        return {
            "resolution_s": self.resolution_s,
            "points": self.points,
            "full": full,
            "times": times if newest is None else times[len(times) - newest:],
            "servers": self.servers.grouped(newest),
            "calls": self.calls.grouped(newest),
            "integrations": self.integrations.grouped(newest),
        }
