"""Prometheus metrics for the load balancer, through prometheus_client.

Two kinds: what happens per API call (a counter and a histogram, updated on the hot path through
series objects cached here, so an answer costs two dict look-ups and two locked adds), and what the
pool, the meetings and the store hold (read at scrape time by ``LbCollector``, never kept in step as
things change, so a removed server disappears at the next scrape). Each ``LbMetrics`` has its own
``CollectorRegistry``: several load balancers in one process (the tests) never share a series.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lb_core.balancer import load
from lb_core.handlers import CALLS
from lb_core.policy import LIMIT_KINDS

if TYPE_CHECKING:
    from lb_core.series import Series
    from lb_core.service import LoadBalancer
    from lb_core.trace import Handled

# What prometheus_client.generate_latest writes (its CONTENT_TYPE_LATEST names a newer version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 1000  # of bbb_lb_requests_total: a client cannot grow memory or scrapes without bound through labels
RECENT_CALLS = 20
FAILED_MARK = b"<returncode>FAILED</returncode>"
FAILED_HEAD_BYTES = 512  # the returncode opens every BBB answer: no need to read a large one further


def answer_failed(handled: Handled) -> bool:
    """A FAILED answer as an integration reads it: returncode FAILED (XML, or a JSON API's "FAILED"),
    or an HTTP error. The ``result`` label cannot say it: it carries the messageKey, which SUCCESS
    answers have too (duplicateWarning, noMeetings...)."""
    answer = handled.answer
    return (answer.status >= 400 or handled.trace.result == "FAILED"
            or FAILED_MARK in answer.body[:FAILED_HEAD_BYTES])

# One series per counter and histogram, as before: a ``_created`` twin of each doubles what Prometheus
# stores from the text format for nothing it uses.
prometheus_client.disable_created_metrics()


class LbCollector(Collector):
    """The gauges (and kept-elsewhere counters) of the running LB, read from it at every scrape."""

    def __init__(self, get_lb: Callable[[], LoadBalancer | None]) -> None:
        self.get_lb = get_lb

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        server = ["server"]
        return {
            "status": GaugeMetricFamily(
                "bbb_lb_server_status", "Server status as the Mconf LB numbers it: 0 undefined, 1 pending, 2 up, "
                "3 down, 4 unreachable.", labels=server),
            "disable_state": GaugeMetricFamily(
                "bbb_lb_server_disable_state", "Operator setting: 0 enabled, 1 disabled, 3 auto.", labels=server),
            "disabled": GaugeMetricFamily(
                "bbb_lb_server_disabled",
                "1 when the server is disabled: by the operator, or (auto) by health or limits.", labels=server),
            "draining": GaugeMetricFamily("bbb_lb_server_draining", "1 while the server drains.", labels=server),
            "meetings": GaugeMetricFamily("bbb_lb_server_meetings", "Running meetings on the server.",
                                          labels=server),
            "participants": GaugeMetricFamily("bbb_lb_server_participants", "Participants on the server.",
                                              labels=server),
            "load": GaugeMetricFamily("bbb_lb_server_load", "Load in participant units, as placement sees it.",
                                      labels=server),
            "poll_errors": CounterMetricFamily("bbb_lb_server_poll_errors_total", "Failed polls of the server.",
                                               labels=server),
            "integration_meetings": GaugeMetricFamily(
                "bbb_lb_integration_meetings", "Meetings of the integration the LB knows to run.",
                labels=["integration"]),
            "integration_participants": GaugeMetricFamily(
                "bbb_lb_integration_participants", "Participants in the integration's meetings, as its "
                "max_participants counts them: polled, plus joins since the poll and joins under way.",
                labels=["integration"]),
            "integration_limit": GaugeMetricFamily(
                "bbb_lb_integration_limit", "The integration's limits that are set (kind: meetings, participants).",
                labels=["integration", "kind"]),
            "integration_limit_hits": CounterMetricFamily(
                "bbb_lb_integration_limit_hits", "Calls refused by the integration's limits (kind: meetings, "
                "participants, record).", labels=["integration", "kind"]),
            "lb_meetings": GaugeMetricFamily("bbb_lb_meetings", "Meetings the LB has placed and knows to run."),
            "store_write_seconds": CounterMetricFamily("bbb_lb_store_write_seconds_total",
                                                       "Time spent writing the store."),
            "store_writes": CounterMetricFamily("bbb_lb_store_writes_total", "Writes of the store."),
            "events_queued": GaugeMetricFamily("bbb_lb_events_queued", "Meeting events waiting to be written."),
            "meeting_events": GaugeMetricFamily("bbb_lb_meeting_events",
                                                "Meeting events kept for getMeetingEvents."),
        }

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry refuse a second metric of the same name."""
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        lb = self.get_lb()
        if lb is not None:
            now = time.time()
            balancer = lb.config.balancer
            for server in lb.pool:
                labels = [server.name]
                families["status"].add_metric(labels, int(server.status))
                families["disable_state"].add_metric(labels, int(server.disable_state))
                families["disabled"].add_metric(labels, 1 if server.is_disabled else 0)
                families["draining"].add_metric(labels, 1 if server.draining else 0)
                families["meetings"].add_metric(labels, server.meeting_count)
                families["participants"].add_metric(labels, server.participants)
                families["load"].add_metric(labels, round(load(server, balancer, now), 3))
                families["poll_errors"].add_metric(labels, server.poll_errors_total)
            for integration in lb.integration_controls.list_integrations() if lb.integration_controls is not None else ():
                labels = [integration["name"]]
                families["integration_meetings"].add_metric(labels, integration["meetings"])
                families["integration_participants"].add_metric(labels, integration["participants"])
                for kind in ("meetings", "participants"):
                    if (limit := integration[f"max_{kind}"]) is not None:
                        families["integration_limit"].add_metric([*labels, kind], limit)
                for kind in LIMIT_KINDS:
                    families["integration_limit_hits"].add_metric([*labels, kind],
                                                                  integration["limit_hits"].get(kind, 0))
            families["lb_meetings"].add_metric([], len(lb.meetings))
            families["meeting_events"].add_metric([], len(lb.events))
            stats = lb.store.stats()
            families["store_write_seconds"].add_metric([], stats.get("write_seconds_total", 0.0))
            families["store_writes"].add_metric([], stats.get("writes_total", 0))
            families["events_queued"].add_metric([], stats.get("events_queued", 0))
        return iter(families.values())


class Labelled:
    """A registry's metrics with the same labels added to every sample (read at scrape time only)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self.registry = registry
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [s._replace(labels={**s.labels, **self.labels}) for s in metric.samples]
            yield labelled


class LbMetrics:
    """The load balancer's metrics in a registry of its own, and the last API calls for the dashboard."""

    def __init__(self, get_lb: Callable[[], LoadBalancer | None] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("bbb_lb_requests_total", "API calls answered, by call and result.",
                                ("call", "result"), registry=self.registry)
        self.failed = Counter("bbb_lb_requests_failed_total", "API calls answered with returncode FAILED "
                              "(or an HTTP error), by call.", ("call",), registry=self.registry)
        self.duration = Histogram("bbb_lb_request_duration_seconds", "Time from request to answer, by call.",
                                  ("call",), buckets=DURATION_BUCKETS, registry=self.registry)
        self.get_lb = get_lb
        self.registry.register(LbCollector(get_lb))
        # The labelled children, looked up once: ``labels()`` validates and locks on every call.
        self._requests: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        self._failed: dict[str, Any] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CALLS)
        self.series: Series | None = None  # the dashboard's history, once the admin listener keeps one

    def observe(self, flow: object, handled: Handled, elapsed_ms: float) -> None:
        """An ``on_answer`` listener: called for every API answer, so a few dict look-ups and adds only."""
        trace = handled.trace
        call = trace.call if trace.call in CALLS or trace.call == "version" else "other"
        result = handled.result[:64]
        counter = self._requests.get((call, result))
        if counter is None:
            counter = self._request_series(call, result)
        counter.inc()
        histogram = self._durations.get(call)
        if histogram is None:
            histogram = self._durations[call] = self.duration.labels(call)
        histogram.observe(elapsed_ms / 1000)
        failed = answer_failed(handled)
        if failed:
            failures = self._failed.get(call)
            if failures is None:
                failures = self._failed[call] = self.failed.labels(call)
            failures.inc()
        if self.series is not None:  # the same call and verdict as the counters' labels: the same meaning
            self.series.count(call, failed)
        self.recent.append({"time": time.time(), "call": trace.call[:64], "integration": trace.integration,
                            "meeting_id": trace.meeting_id[:120], "server": trace.server, "result": result,
                            "status": handled.answer.status, "ms": round(elapsed_ms, 1)})

    def _request_series(self, call: str, result: str) -> Any:
        """A new (call, result) series; past MAX_SERIES, new results of a call count as its "other"."""
        if len(self._requests) >= MAX_SERIES:
            result = "other"
            counter = self._requests.get((call, result))
            if counter is not None:
                return counter
        counter = self._requests[(call, result)] = self.requests.labels(call, result)
        return counter

    def recent_calls(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self.recent))

    def render(self) -> bytes:
        """The Prometheus text format (``CONTENT_TYPE``), the LB's gauges read now.

        With several processes on one Redis each reports itself: every series carries its
        ``instance_id`` (the node id the dashboard lists), so one scrape config covers them all."""
        lb = self.get_lb()
        cluster = getattr(lb, "cluster", None)
        if cluster is not None:
            return prometheus_client.generate_latest(Labelled(self.registry, {"instance_id": cluster.node_id}))
        return prometheus_client.generate_latest(self.registry)
