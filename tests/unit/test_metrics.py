"""The Prometheus text format as written by lb_core.metrics, checked line by line."""

from __future__ import annotations

import math

import pytest

from lb_core.api import Answer
from lb_core.metrics import (
    MAX_SERIES,
    RECENT_CALLS,
    Counter,
    Gauge,
    Histogram,
    LbMetrics,
    Registry,
    escape_label_value,
    format_value,
)
from lb_core.trace import Handled, Trace


def test_counter_help_type_and_samples() -> None:
    registry = Registry()
    requests = registry.register(Counter("demo_requests_total", "Calls answered.", ("call", "result")))
    requests.inc(("create", "SUCCESS"))
    requests.inc(("create", "SUCCESS"))
    requests.inc(("join", "redirect"), 2.5)
    assert registry.render() == (
        "# HELP demo_requests_total Calls answered.\n"
        "# TYPE demo_requests_total counter\n"
        'demo_requests_total{call="create",result="SUCCESS"} 2\n'
        'demo_requests_total{call="join",result="redirect"} 2.5\n'
    )


def test_label_values_and_help_are_escaped() -> None:
    gauge = Gauge("demo_gauge", "Back\\slash and\nnewline in help.", ("server",))
    gauge.set(1, ('a"b\\c\nd',))
    assert gauge.render().splitlines() == [
        "# HELP demo_gauge Back\\\\slash and\\nnewline in help.",
        "# TYPE demo_gauge gauge",
        'demo_gauge{server="a\\"b\\\\c\\nd"} 1',
    ]
    assert escape_label_value('"') == '\\"'


def test_unlabelled_metric_has_no_braces() -> None:
    gauge = Gauge("demo_meetings", "Meetings.")
    gauge.set(7)
    gauge.inc(amount=-2)
    assert gauge.render().splitlines()[-1] == "demo_meetings 5"


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    histogram = Histogram("demo_seconds", "Durations.", ("call",), buckets=(0.1, 1, 0.5))
    for value in (0.05, 0.1, 0.3, 0.7, 2.0):
        histogram.observe(value, ("create",))
    histogram.observe(0.2, ("join",))
    lines = histogram.render().splitlines()
    assert lines[:2] == ["# HELP demo_seconds Durations.", "# TYPE demo_seconds histogram"]
    assert lines[2:8] == [
        'demo_seconds_bucket{call="create",le="0.1"} 2',  # le is inclusive: 0.1 counts in 0.1
        'demo_seconds_bucket{call="create",le="0.5"} 3',
        'demo_seconds_bucket{call="create",le="1.0"} 4',
        'demo_seconds_bucket{call="create",le="+Inf"} 5',
        'demo_seconds_sum{call="create"} 3.15',
        'demo_seconds_count{call="create"} 5',
    ]
    assert lines[8:] == [
        'demo_seconds_bucket{call="join",le="0.1"} 0',
        'demo_seconds_bucket{call="join",le="0.5"} 1',
        'demo_seconds_bucket{call="join",le="1.0"} 1',
        'demo_seconds_bucket{call="join",le="+Inf"} 1',
        'demo_seconds_sum{call="join"} 0.2',
        'demo_seconds_count{call="join"} 1',
    ]
    assert histogram.count(("create",)) == 5


def test_values_are_formatted_as_prometheus_reads_them() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(1e20) == "1e+20"


def test_names_labels_and_values_are_checked() -> None:
    with pytest.raises(ValueError):
        Counter("bad-name", "x")
    with pytest.raises(ValueError):
        Counter("ok_total", "x", ("le",))
    with pytest.raises(ValueError):
        Counter("ok_total", "x", ("server",)).inc(("a", "b"))
    with pytest.raises(ValueError):
        Counter("ok_total", "x").inc(amount=-1)
    registry = Registry()
    registry.register(Gauge("twice", "x"))
    with pytest.raises(ValueError):
        registry.register(Gauge("twice", "x"))


def test_lb_metrics_observe_answers_and_keep_recent_calls() -> None:
    metrics = LbMetrics()
    for i in range(RECENT_CALLS + 5):
        metrics.observe(None, Handled(Answer(200, b"", {}), Trace(
            call="create", integration="default", meeting_id=f"m{i}", server="bbb1", result="SUCCESS")), 12.5)
    metrics.observe(None, Handled(Answer(404, b"", {}), Trace(call="noSuchCall\n{}", result="unsupportedRequest")),
                    1.0)
    text = metrics.render()
    assert 'bbb_lb_requests_total{call="create",result="SUCCESS"} 25' in text
    assert 'bbb_lb_requests_total{call="other",result="unsupportedRequest"} 1' in text  # unknown calls fold
    assert 'bbb_lb_request_duration_seconds_bucket{call="create",le="0.025"} 25' in text
    assert 'bbb_lb_request_duration_seconds_bucket{call="create",le="0.01"} 0' in text
    recent = metrics.recent_calls()
    assert len(recent) == RECENT_CALLS
    assert recent[0]["call"] == "noSuchCall\n{}" and recent[1]["meeting_id"] == "m24"


def test_lb_metrics_label_sets_are_bounded() -> None:
    metrics = LbMetrics()
    for i in range(MAX_SERIES + 50):
        metrics.observe(None, Handled(Answer(200, b"", {}), Trace(call="getMeetings", result=f"key{i}")), 1.0)
    assert len(metrics.requests) <= MAX_SERIES + 1
    assert metrics.requests.get(("getMeetings", "other")) == 50
