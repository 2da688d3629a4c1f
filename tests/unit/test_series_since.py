"""lb_core.series: ``snapshot(since)`` answers only what a page that holds the window up to ``since`` lacks.

A page merges each answer into its window the way ``plots.js`` ``mergeSeries`` does (``merge`` below):
after any number of polls, what it holds is what a whole-window answer would give.
"""

from __future__ import annotations

from typing import Any

from lb_core.config_sections import ServerConfig
from lb_core.pool import Pool
from lb_core.series import Series
from tests.unit.test_metrics import fake_lb

GROUPS = ("servers", "calls", "integrations")


def server(name: str) -> ServerConfig:
    return ServerConfig(name=name, url=f"http://{name}.example/bigbluebutton/", secret="s" * 20)


def merge(held: dict[str, Any] | None, answer: dict[str, Any]) -> dict[str, Any]:
    """What the page does with an answer (``mergeSeries`` in lb_core/static/plots.js)."""
    if held is None or answer["full"]:
        return answer
    drop = len(held["times"]) - max(0, min(len(held["times"]), answer["points"] - len(answer["times"])))
    merged = {**answer, "times": held["times"][drop:] + answer["times"]}
    for group in GROUPS:
        merged[group] = {
            name: {field: (held[group].get(name, {}).get(field) or [None] * len(held["times"]))[drop:] + values
                   for field, values in fields.items()}
            for name, fields in answer[group].items()}
    return merged


def without_full(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "full"}


def test_since_answers_only_the_points_after_it_with_every_series_of_the_window() -> None:
    pool = Pool([server("bbb1")])
    lb = fake_lb(pool)
    series = Series(resolution_s=1.0, points=10)
    for tick in range(4):
        pool.get("bbb1").joins_since_poll = tick
        series.tick(lb, now=100.0 + tick)
    series.count("join", failed=True)
    pool.get("bbb1").joins_since_poll = 4
    series.tick(lb, now=104.0)
    got = series.snapshot(since=102.0)
    assert got["full"] is False and (got["resolution_s"], got["points"]) == (1.0, 10)
    assert got["times"] == [103.0, 104.0]
    assert got["servers"]["bbb1"]["participants"] == [3, 4]
    # A call that appeared at 104: null before, as in a whole-window answer.
    assert got["calls"] == {"join": {"requests": [None, 1.0], "failed": [None, 1.0]}}
    newest = series.snapshot(since=104.0)  # nothing new: no points, but every series still named
    assert newest["times"] == [] and newest["servers"]["bbb1"] == {"load": [], "participants": [],
                                                                   "meetings": []}
    between = series.snapshot(since=102.5)  # a time between two points: the points after it
    assert between["times"] == [103.0, 104.0]


def test_without_since_or_with_a_time_older_than_the_window_the_whole_window_is_answered() -> None:
    pool = Pool([server("bbb1")])
    lb = fake_lb(pool)
    series = Series(resolution_s=1.0, points=3)
    for tick in range(6):
        series.tick(lb, now=100.0 + tick)
    whole = series.snapshot()
    assert whole["full"] is True and whole["times"] == [103.0, 104.0, 105.0]
    assert series.snapshot(since=102.0) == whole  # the page missed points the window no longer holds
    assert series.snapshot(since=50.0) == whole  # e.g. a page still holding the points of a previous run
    assert Series(resolution_s=1.0).snapshot(since=100.0)["full"] is True  # bbb-lb restarted: nothing held yet
    assert series.snapshot(since=103.0)["full"] is False


def test_a_page_merging_answers_holds_what_a_whole_window_answer_gives_through_servers_coming_and_going() -> None:
    pool = Pool([server("bbb1"), server("bbb2")])
    lb = fake_lb(pool)
    series = Series(resolution_s=1.0, points=4)
    held = merge(None, series.snapshot())
    for tick in range(14):
        if tick == 3:
            pool.remove("bbb2")  # its line shows a gap (nulls), then leaves once its window is empty
        if tick == 5:
            pool.add(server("bbb3"))  # appears: nulls for the points before
        if tick % 3 == 0:
            series.count("create", failed=False)
        pool.get("bbb1").joins_since_poll = tick
        series.tick(lb, now=100.0 + tick)
        if tick % 2 == 0:  # the page polls every other tick: some answers carry two points
            since = held["times"][-1] if held["times"] else None
            answer = series.snapshot(since=since)
            assert answer["full"] is (since is None)
            held = merge(held, answer)
            assert without_full(held) == without_full(series.snapshot()), tick
            if tick == 4:
                assert held["servers"]["bbb2"]["meetings"] == [0, 0, None, None]
    assert set(held["servers"]) == {"bbb1", "bbb3"}
    assert held["servers"]["bbb3"]["meetings"] == [0, 0, 0, 0]


def test_an_incremental_answer_is_small_whatever_the_window() -> None:
    pool = Pool([server(f"bbb{i}") for i in range(10)])
    lb = fake_lb(pool)
    series = Series(resolution_s=10.0, points=360)
    for tick in range(360):
        series.tick(lb, now=1_764_460_800.0 + 10 * tick)
    whole = series.snapshot()
    latest = series.snapshot(since=whole["times"][-2])
    assert len(latest["times"]) == 1
    assert all(len(values) == 1 for fields in latest["servers"].values() for values in fields.values())
