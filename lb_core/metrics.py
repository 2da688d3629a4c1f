"""Prometheus metrics for the load balancer, in the text exposition format 0.0.4.

Written here rather than taken from prometheus_client: the LB needs a handful of counters, gauges
and one histogram, and per-request updates must stay a couple of dict operations on the hot path.
Server gauges are not kept up to date as things change; they are read from the pool at scrape time.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from lb_core.handlers import CALLS

if TYPE_CHECKING:
    from lb_core.service import LoadBalancer
    from lb_core.trace import Handled

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 1000  # per metric: a client cannot grow memory or scrapes without bound through labels
RECENT_CALLS = 20

Labels = tuple[str, ...]
M = TypeVar("M", bound="Metric")


def format_value(value: float) -> str:
    """Integers without a fraction, and the spellings Prometheus expects for infinities and NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Metric:
    """One metric family: a name, its help text, its label names, and its series by label values."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        for label in self.labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r}")

    def _check(self, labels: Labels) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels!r}")

    def _label_text(self, labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = [*zip(self.labelnames, labels, strict=True), *extra]
        if not pairs:
            return ""
        return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "}"

    def samples(self) -> Iterator[str]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(self.samples())
        return "\n".join(lines) + "\n"


class _Scalar(Metric):
    """A value per label set; counters and gauges differ only in what callers may do."""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}

    def get(self, labels: Labels = ()) -> float:
        return self._values.get(labels, 0.0)

    def has(self, labels: Labels) -> bool:
        return labels in self._values

    def __len__(self) -> int:
        return len(self._values)

    def set(self, value: float, labels: Labels = ()) -> None:
        """For gauges; for counters, mirror a count that is kept elsewhere (read at scrape time)."""
        self._check(labels)
        self._values[labels] = float(value)

    def clear(self) -> None:
        """Forget every series (before a scrape-time refresh, so removed servers disappear)."""
        self._values.clear()

    def samples(self) -> Iterator[str]:
        for labels, value in self._values.items():
            yield f"{self.name}{self._label_text(labels)} {format_value(value)}"


class Counter(_Scalar):
    kind = "counter"

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        values = self._values
        if labels not in values:
            self._check(labels)
        values[labels] = values.get(labels, 0.0) + amount


class Gauge(_Scalar):
    kind = "gauge"

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        if labels not in self._values:
            self._check(labels)
        self._values[labels] = self._values.get(labels, 0.0) + amount


class Histogram(Metric):
    """Counts per bucket (not cumulative while recording; summed up when rendered), sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = DURATION_BUCKETS) -> None:
        super().__init__(name, help_text, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct and not empty")
        self.buckets = tuple(bounds)
        # per label set: [count in bucket 0 .. count in bucket n-1, count above the last bound], sum
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        series = self._series.get(labels)
        if series is None:
            self._check(labels)
            series = self._series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect_left(self.buckets, value)] += 1  # le is inclusive: value == bound counts in it
        series[1][0] += value

    def count(self, labels: Labels = ()) -> int:
        series = self._series.get(labels)
        return sum(series[0]) if series else 0

    def samples(self) -> Iterator[str]:
        for labels, (counts, total) in self._series.items():
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = "+Inf" if math.isinf(bound) else repr(bound)
                yield f"{self.name}_bucket{self._label_text(labels, (('le', le),))} {cumulative}"
            yield f"{self.name}_sum{self._label_text(labels)} {format_value(total[0])}"
            yield f"{self.name}_count{self._label_text(labels)} {cumulative}"


class Registry:
    """Metric families in the order they were registered."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered already")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        return "".join(metric.render() for metric in self._metrics.values())


class LbMetrics:
    """The load balancer's metrics, and the last API calls for the dashboard."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.register(Counter("bbb_lb_requests_total", "API calls answered, by call and result.",
                                           ("call", "result")))
        self.duration = r.register(Histogram("bbb_lb_request_duration_seconds",
                                             "Time from request to answer, by call.", ("call",)))
        self.server_status = r.register(Gauge(
            "bbb_lb_server_status", "Server status as the Mconf LB numbers it: 0 undefined, 1 pending, 2 up, "
            "3 down, 4 unreachable.", ("server",)))
        self.server_disable_state = r.register(Gauge(
            "bbb_lb_server_disable_state", "Operator setting: 0 enabled, 1 disabled, 3 auto.", ("server",)))
        self.server_disabled = r.register(Gauge(
            "bbb_lb_server_disabled", "1 when the server is disabled: by the operator, or (auto) by health or limits.",
            ("server",)))
        self.server_draining = r.register(Gauge("bbb_lb_server_draining", "1 while the server drains.",
                                                ("server",)))
        self.server_meetings = r.register(Gauge("bbb_lb_server_meetings", "Running meetings on the server.",
                                                ("server",)))
        self.server_participants = r.register(Gauge("bbb_lb_server_participants", "Participants on the server.",
                                                    ("server",)))
        self.server_load = r.register(Gauge("bbb_lb_server_load", "Load in participant units, as placement sees it.",
                                            ("server",)))
        self.server_poll_errors = r.register(Counter("bbb_lb_server_poll_errors_total",
                                                     "Failed polls of the server.", ("server",)))
        self.meetings = r.register(Gauge("bbb_lb_meetings", "Meetings the LB has placed and knows to run."))
        self.store_write_seconds = r.register(Counter("bbb_lb_store_write_seconds_total",
                                                      "Time spent writing the store."))
        self.store_writes = r.register(Counter("bbb_lb_store_writes_total", "Writes of the store."))
        self.events_queued = r.register(Gauge("bbb_lb_events_queued", "Meeting events waiting to be written."))
        self.meeting_events = r.register(Gauge("bbb_lb_meeting_events", "Meeting events kept for getMeetingEvents."))
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CALLS)

    def observe(self, flow: object, handled: Handled, elapsed_ms: float) -> None:
        """An ``on_answer`` listener: called for every API answer, so a few dict updates only."""
        trace = handled.trace
        call = trace.call if trace.call in CALLS or trace.call == "version" else "other"
        result = handled.result[:64]
        key = (call, result)
        if len(self.requests) >= MAX_SERIES and not self.requests.has(key):
            key = (call, "other")
        self.requests.inc(key)
        self.duration.observe(elapsed_ms / 1000, (call,))
        self.recent.append({"time": time.time(), "call": trace.call[:64], "integration": trace.integration,
                            "meeting_id": trace.meeting_id[:120], "server": trace.server, "result": result,
                            "status": handled.answer.status, "ms": round(elapsed_ms, 1)})

    def recent_calls(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self.recent))

    def refresh(self, lb: LoadBalancer) -> None:
        """Read the gauges from the running LB; servers that were removed disappear."""
        now = time.time()
        balancer = lb.config.balancer
        per_server = (self.server_status, self.server_disable_state, self.server_disabled, self.server_draining,
                      self.server_meetings, self.server_participants, self.server_load, self.server_poll_errors)
        for metric in per_server:
            metric.clear()
        for server in lb.pool:
            labels = (server.name,)
            self.server_status.set(int(server.status), labels)
            self.server_disable_state.set(int(server.disable_state), labels)
            self.server_disabled.set(1 if server.is_disabled else 0, labels)
            self.server_draining.set(1 if server.draining else 0, labels)
            self.server_meetings.set(server.meeting_count, labels)
            self.server_participants.set(server.participants, labels)
            self.server_load.set(round(server.load(balancer, now), 3), labels)
            self.server_poll_errors.set(server.poll_errors_total, labels)
        self.meetings.set(len(lb.meetings))
        self.meeting_events.set(len(lb.events))
        stats = lb.store.stats()
        self.store_write_seconds.set(stats.get("write_seconds_total", 0.0))
        self.store_writes.set(stats.get("writes_total", 0))
        self.events_queued.set(stats.get("events_queued", 0))

    def render(self, lb: LoadBalancer | None = None) -> str:
        if lb is not None:
            self.refresh(lb)
        return self.registry.render()
