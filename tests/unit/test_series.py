"""lb_core.series: the dashboard's last hour, bounded whatever the traffic, with /metrics' meanings."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lb_core.api import Answer
from lb_core.config_sections import ServerConfig
from lb_core.errors import checksum_mismatch
from lb_core.metrics import LbMetrics
from lb_core.pool import Pool
from lb_core.series import Series
from lb_core.trace import Handled, Trace
from tests.unit.test_metrics import fake_lb


def pool_of(*names: str) -> Pool:
    return Pool([ServerConfig(name=n, url=f"http://{n}.example/bigbluebutton/", secret="s" * 20) for n in names])


def integration(name: str, meetings: int, participants: int, max_participants: int | None = None) -> dict[str, Any]:
    return {"name": name, "meetings": meetings, "participants": participants, "max_meetings": None,
            "max_participants": max_participants}


def test_gauges_are_sampled_per_tick_and_the_window_stays_bounded() -> None:
    pool = pool_of("bbb1", "bbb2")
    lb = fake_lb(pool, integrations=[integration("moodle", 2, 7, 50)])
    series = Series(resolution_s=1.0, points=5)
    for tick in range(12):
        pool.get("bbb1").joins_since_poll = tick  # what a join adds before the next poll
        series.tick(lb, now=1000.0 + tick)
    got = series.snapshot()
    assert got["times"] == [1007.0, 1008.0, 1009.0, 1010.0, 1011.0]  # the last five ticks only
    assert got["servers"]["bbb1"]["participants"] == [7, 8, 9, 10, 11]
    assert got["servers"]["bbb2"]["participants"] == [0] * 5
    assert set(got["servers"]["bbb1"]) == {"load", "participants", "meetings"}
    assert got["integrations"]["moodle"] == {"meetings": [2] * 5, "participants": [7] * 5,
                                             "max_meetings": [None] * 5, "max_participants": [50] * 5}


def test_calls_become_rates_per_second_and_failed_is_its_own_line() -> None:
    series = Series(resolution_s=2.0, points=10)
    lb = fake_lb(pool_of("bbb1"))
    series.tick(lb, now=100.0)
    for _ in range(6):
        series.count("create", failed=False)
    for _ in range(4):
        series.count("join", failed=True)
    series.tick(lb, now=102.0)
    series.tick(lb, now=104.0)  # nothing answered: a rate of 0, not a gap
    calls = series.snapshot()["calls"]
    assert calls["create"] == {"requests": [None, 3.0, 0.0], "failed": [None, 0.0, 0.0]}
    assert calls["join"] == {"requests": [None, 2.0, 0.0], "failed": [None, 2.0, 0.0]}


def test_a_removed_server_leaves_once_its_window_is_empty_and_a_new_one_is_padded() -> None:
    pool = pool_of("bbb1", "bbb2")
    lb = fake_lb(pool)
    series = Series(resolution_s=1.0, points=3)
    series.tick(lb, now=1.0)
    pool.remove("bbb2")
    pool.add(ServerConfig(name="bbb3", url="http://bbb3.example/bigbluebutton/", secret="s" * 20))
    series.tick(lb, now=2.0)
    got = series.snapshot()["servers"]
    assert got["bbb2"]["meetings"] == [0, None]
    assert got["bbb3"]["meetings"] == [None, 0]  # one value per entry of times, always
    series.tick(lb, now=3.0)
    series.tick(lb, now=4.0)
    assert "bbb2" not in series.snapshot()["servers"]


def test_ticks_fall_on_the_wall_clock_grid() -> None:
    series = Series(resolution_s=10.0)
    assert series.next_tick(1003.2) == 1010.0
    assert series.next_tick(1010.0) == 1020.0


@pytest.mark.parametrize(("resolution", "points"), [(0, 10), (-1, 10), (float("nan"), 10), (1, 1)])
def test_a_series_without_a_resolution_or_points_is_refused(resolution: float, points: int) -> None:
    with pytest.raises(ValueError):
        Series(resolution, points)


def test_the_answer_path_feeds_series_and_metrics_the_same_verdicts() -> None:
    """The dashboard's FAILED rate is rate(bbb_lb_requests_failed_total): both are fed by one decision."""
    metrics = LbMetrics()
    metrics.series = series = Series(resolution_s=1.0, points=4)
    def handled(status: int, body: bytes, call: str, result: str) -> Handled:
        return Handled(Answer(status, body, {}), Trace(call=call, result=result))

    answers = [
        handled(200, checksum_mismatch().to_xml(), "join", "checksumError"),  # FAILED; result is the messageKey
        handled(200, b"<response><returncode>SUCCESS</returncode><messageKey>duplicateWarning</messageKey>"
                b"</response>", "create", "duplicateWarning"),  # a messageKey, yet SUCCESS
        handled(302, b"", "join", "redirect"),
        handled(200, b'{"response":{"returncode":"FAILED"}}', "getMeetings", "FAILED"),
        handled(200, b"", "no-such-call", "SUCCESS"),
    ]
    for a in answers:
        metrics.observe(None, a, 1.0)
    series.tick(None, now=1.0)
    failed = {s.labels["call"]: s.value for family in text_string_to_metric_families(metrics.render().decode())
              for s in family.samples if s.name == "bbb_lb_requests_failed_total"}
    assert failed == {"join": 1.0, "getMeetings": 1.0}
    calls = series.snapshot()["calls"]
    assert {call: v["failed"][-1] for call, v in calls.items() if v["failed"][-1]} == failed
    assert calls["join"]["requests"] == [2.0] and calls["other"]["requests"] == [1.0]
