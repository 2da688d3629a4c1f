"""lb_core.metrics: the names, labels and values a Prometheus scrape of the admin listener gets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lb_core.api import Answer
from lb_core.config_sections import BalancerConfig, ServerConfig
from lb_core.metrics import MAX_SERIES, RECENT_CALLS, LbMetrics
from lb_core.pool import DisableState, Pool, Status
from lb_core.trace import Handled, Trace


def samples(metrics: LbMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed as Prometheus parses it: (name, sorted labels) -> value."""
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def types(metrics: LbMetrics) -> dict[str, str]:
    text = metrics.render().decode()
    return dict(line.split(" ")[2:4] for line in text.splitlines() if line.startswith("# TYPE "))


def answer(call: str, result: str, status: int = 200, **fields: str) -> Handled:
    return Handled(Answer(status, b"", {}), Trace(call=call, result=result, **fields))


def fake_lb(pool: Pool, meetings: int = 0, events: int = 0, store: dict[str, float] | None = None,
            integrations: list[dict[str, Any]] | None = None) -> SimpleNamespace:
    """What the collector reads of a LoadBalancer, and nothing else."""
    return SimpleNamespace(config=SimpleNamespace(balancer=BalancerConfig()), pool=pool,
                           meetings=dict.fromkeys(range(meetings)), events=[None] * events,
                           store=SimpleNamespace(stats=lambda: dict(store or {})),
                           integration_controls=SimpleNamespace(list_integrations=lambda: list(integrations or [])))


def test_calls_are_counted_and_timed_by_call_and_result() -> None:
    metrics = LbMetrics()
    for _ in range(3):
        metrics.observe(None, answer("create", "SUCCESS"), 12.5)
    metrics.observe(None, answer("join", "redirect"), 0.5)
    metrics.observe(None, answer("getMeetings", "checksumError"), 2000.0)
    got = samples(metrics)
    assert got[("bbb_lb_requests_total", (("call", "create"), ("result", "SUCCESS")))] == 3
    assert got[("bbb_lb_requests_total", (("call", "join"), ("result", "redirect")))] == 1
    assert got[("bbb_lb_requests_total", (("call", "getMeetings"), ("result", "checksumError")))] == 1
    bucket = "bbb_lb_request_duration_seconds_bucket"
    assert got[(bucket, (("call", "create"), ("le", "0.01")))] == 0
    assert got[(bucket, (("call", "create"), ("le", "0.025")))] == 3
    assert got[(bucket, (("call", "join"), ("le", "0.001")))] == 1  # le is inclusive and cumulative
    assert got[(bucket, (("call", "getMeetings"), ("le", "1.0")))] == 0
    assert got[(bucket, (("call", "getMeetings"), ("le", "2.5")))] == 1
    assert got[(bucket, (("call", "getMeetings"), ("le", "+Inf")))] == 1
    assert got[("bbb_lb_request_duration_seconds_count", (("call", "create"),))] == 3
    assert got[("bbb_lb_request_duration_seconds_sum", (("call", "create"),))] == pytest.approx(0.0375)
    assert not any(name.endswith("_created") for name, _ in got)  # one series per counter, as before
    kinds = types(metrics)
    assert kinds["bbb_lb_requests_total"] == "counter"
    assert kinds["bbb_lb_request_duration_seconds"] == "histogram"


def test_unknown_calls_fold_and_recent_calls_are_kept_newest_first() -> None:
    metrics = LbMetrics()
    for i in range(RECENT_CALLS + 5):
        metrics.observe(None, answer("create", "SUCCESS", integration="default", meeting_id=f"m{i}",
                                     server="bbb1"), 12.5)
    metrics.observe(None, answer("noSuchCall\n{}", "unsupportedRequest", 404), 1.0)
    metrics.observe(None, answer("getMeetings", "", 502), 1.0)  # no result: the status counts
    got = samples(metrics)
    assert got[("bbb_lb_requests_total", (("call", "other"), ("result", "unsupportedRequest")))] == 1
    assert got[("bbb_lb_requests_total", (("call", "getMeetings"), ("result", "502")))] == 1
    recent = metrics.recent_calls()
    assert len(recent) == RECENT_CALLS
    assert [r["call"] for r in recent[:2]] == ["getMeetings", "noSuchCall\n{}"]
    assert recent[2]["meeting_id"] == "m24" and recent[2]["ms"] == 12.5


def test_result_label_sets_are_bounded() -> None:
    metrics = LbMetrics()
    for i in range(MAX_SERIES + 50):
        metrics.observe(None, answer("getMeetings", f"key{i}"), 1.0)
    metrics.observe(None, answer("getMeetings", "key0"), 1.0)  # a series that exists still counts
    got = samples(metrics)
    series = [labels for name, labels in got if name == "bbb_lb_requests_total"]
    assert len(series) == MAX_SERIES + 1
    assert got[("bbb_lb_requests_total", (("call", "getMeetings"), ("result", "other")))] == 50
    assert got[("bbb_lb_requests_total", (("call", "getMeetings"), ("result", "key0")))] == 2


def test_pool_gauges_are_read_at_scrape_time() -> None:
    pool = Pool([ServerConfig(name="bbb1", url="http://a/bigbluebutton/", secret="s1"),
                 # The config refuses such a name; built unvalidated to prove the label escaping anyway.
                 ServerConfig.model_construct(name='odd "name"\\', url="http://b/bigbluebutton/", secret="s2")])
    bbb1 = pool.get("bbb1")
    assert bbb1 is not None
    bbb1.status = Status.UP
    bbb1.poll_errors_total = 4
    lb = fake_lb(pool, meetings=3, events=7, store={"writes_total": 9, "write_seconds_total": 0.25,
                                                    "events_queued": 2})
    metrics = LbMetrics(lambda: lb)  # type: ignore[arg-type, return-value]
    got = samples(metrics)
    assert got[("bbb_lb_server_status", (("server", "bbb1"),))] == int(Status.UP)
    assert got[("bbb_lb_server_status", (("server", 'odd "name"\\'),))] == int(Status.UNDEFINED)
    assert got[("bbb_lb_server_disable_state", (("server", "bbb1"),))] == int(DisableState.AUTO)
    assert got[("bbb_lb_server_disabled", (("server", "bbb1"),))] == (1 if bbb1.is_disabled else 0)
    assert got[("bbb_lb_server_draining", (("server", "bbb1"),))] == 0
    assert got[("bbb_lb_server_meetings", (("server", "bbb1"),))] == 0
    assert got[("bbb_lb_server_participants", (("server", "bbb1"),))] == 0
    assert got[("bbb_lb_server_load", (("server", "bbb1"),))] == 0
    assert got[("bbb_lb_server_poll_errors_total", (("server", "bbb1"),))] == 4
    assert got[("bbb_lb_meetings", ())] == 3
    assert got[("bbb_lb_meeting_events", ())] == 7
    assert got[("bbb_lb_store_writes_total", ())] == 9
    assert got[("bbb_lb_store_write_seconds_total", ())] == 0.25
    assert got[("bbb_lb_events_queued", ())] == 2
    kinds = types(metrics)
    assert kinds["bbb_lb_server_poll_errors_total"] == "counter" and kinds["bbb_lb_server_load"] == "gauge"
    assert kinds["bbb_lb_store_writes_total"] == "counter" and kinds["bbb_lb_meetings"] == "gauge"

    # Changes show at the next scrape, and a removed server is gone from it.
    bbb1.draining = True
    pool.remove('odd "name"\\')
    got = samples(metrics)
    assert got[("bbb_lb_server_draining", (("server", "bbb1"),))] == 1
    assert {labels for name, labels in got if name == "bbb_lb_server_status"} == {(("server", "bbb1"),)}


def test_before_the_lb_runs_every_family_is_declared_without_samples() -> None:
    metrics = LbMetrics()
    assert samples(metrics) == {}
    for name in ("bbb_lb_requests_total", "bbb_lb_request_duration_seconds", "bbb_lb_server_status",
                 "bbb_lb_server_disable_state", "bbb_lb_server_disabled", "bbb_lb_server_draining",
                 "bbb_lb_server_meetings", "bbb_lb_server_participants", "bbb_lb_server_load",
                 "bbb_lb_server_poll_errors_total", "bbb_lb_meetings", "bbb_lb_meeting_events",
                 "bbb_lb_events_queued", "bbb_lb_store_writes_total", "bbb_lb_store_write_seconds_total"):
        assert name in types(metrics), name


def test_each_lb_has_its_own_registry() -> None:
    first, second = LbMetrics(), LbMetrics()
    first.observe(None, answer("create", "SUCCESS"), 1.0)
    assert ("bbb_lb_requests_total", (("call", "create"), ("result", "SUCCESS"))) in samples(first)
    assert samples(second) == {}
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "bbb_lb_" not in global_text


def test_integration_usage_limits_and_refusals_are_read_at_scrape_time() -> None:
    moodle = {"name": "moodle", "meetings": 2, "participants": 19, "max_meetings": None, "max_participants": 20,
              "limit_hits": {"participants": 3}}
    metrics = LbMetrics(lambda: fake_lb(Pool([]), integrations=[moodle]))
    got = samples(metrics)
    moodle_label = (("integration", "moodle"),)
    assert got[("bbb_lb_integration_meetings", moodle_label)] == 2
    assert got[("bbb_lb_integration_participants", moodle_label)] == 19
    assert got[("bbb_lb_integration_limit", (*moodle_label, ("kind", "participants")))] == 20
    assert ("bbb_lb_integration_limit", (*moodle_label, ("kind", "meetings"))) not in got  # no limit set
    assert got[("bbb_lb_integration_limit_hits_total", (*moodle_label, ("kind", "participants")))] == 3
    assert got[("bbb_lb_integration_limit_hits_total", (*moodle_label, ("kind", "record")))] == 0
