"""/api/series?since= through a real ``bbb-lb run``: a dashboard open for hours fetches each point once.

The series run at a fraction of a second a point here (``admin.series_resolution_s``), so windows fill
and slide within seconds; every step waits for what it caused, never for a time.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import lxml.html
import pytest

from tests.conftest import LB, wait_for
from tests.e2e.test_admin import TOKEN, admin_url, api, api_json, create, wait_admin
from tests.e2e.test_dashboard import chromium
from tests.unit.test_series_since import merge, without_full


def since(lb: LB, time: float) -> dict[str, Any]:
    return api_json(lb, "GET", "/api/series?since=" + quote(json.dumps(time)))


def caught_up(lb: LB, held: dict[str, Any]) -> dict[str, Any] | None:
    """``held`` merged with the points after its newest, if that equals a whole-window answer read just before
    (None when a tick fell between the two reads: ask again)."""
    whole = api_json(lb, "GET", "/api/series")
    merged = merge(held, since(lb, held["times"][-1]))
    return merged if without_full(merged) == without_full(whole) else None


def test_since_answers_the_new_points_and_the_servers_that_came_or_left(lb_factory, sim):
    lb: LB = wait_admin(lb_factory(
        servers=[0, 1], admin={"host": "127.0.0.1", "port": 0, "token": TOKEN, "series_resolution_s": 0.1,
                               "series_points": 15}))
    held = wait_for(lambda: (s := api_json(lb, "GET", "/api/series"))["full"] and len(s["times"]) >= 3 and s,
                    15, what="a few points")
    assert set(held["servers"]) == {"bbb1", "bbb2"}

    # Only what came after the newest time held, every series of the window named.
    newest = held["times"][-1]
    answer = wait_for(lambda: (a := since(lb, newest))["times"] and a, 15, what="a new point")
    assert answer["full"] is False and (answer["resolution_s"], answer["points"]) == (0.1, 15)
    assert all(t > newest for t in answer["times"]) and len(answer["times"]) < len(held["times"]) + 1
    assert set(answer["servers"]) == {"bbb1", "bbb2"}
    assert all(len(values) == len(answer["times"]) for fields in answer["servers"].values()
               for values in fields.values())

    # A server added appears in the next answers (the page pads its older points); calls too.
    api_json(lb, "POST", "/api/servers", dict(sim.servers[2]))
    assert create(lb, "since-room").field("returncode") == "SUCCESS"
    held = wait_for(lambda: caught_up(lb, held), 15, what="a merged window equal to the whole one")
    held = wait_for(lambda: (h := caught_up(lb, held)) and "bbb3" in h["servers"] and "create" in h["calls"] and h,
                    15, what="bbb3 and the create call in the answers")

    # A server removed: null (a gap in its line) while its past is in the window, then gone from the answers.
    api_json(lb, "DELETE", "/api/servers/bbb2")
    held = wait_for(lambda: (h := caught_up(lb, held)) and h["servers"]["bbb2"]["load"][-1] is None and h,
                    15, what="bbb2's line to stop")
    assert since(lb, held["times"][-1])["servers"].get("bbb2", {"load": []})["load"] in ([], [None], [None, None])
    held = wait_for(lambda: (h := caught_up(lb, held)) and "bbb2" not in h["servers"] and h,
                    15, what="bbb2 to leave the window")
    assert "bbb2" not in since(lb, held["times"][-1])["servers"]

    # A page that fell behind the window gets it all again, marked full: it replaces what it holds.
    behind = since(lb, held["times"][0] - 100)
    assert behind["full"] is True and len(behind["times"]) == 15


@pytest.mark.parametrize("query", ["since=", "since=abc", "since=nan", "since=inf", "since=-1", "since=1e9",
                                   "since=12,5", "since=1&since=2", "since=" + "9" * 40])
def test_a_bad_since_is_a_json_400_naming_the_parameter(lb_factory, query):
    lb: LB = wait_admin(lb_factory(servers=[0], admin={"host": "127.0.0.1", "port": 0, "token": TOKEN}))
    reply = api(lb, "GET", "/api/series?" + query)
    assert reply.status == 400, (query, reply.status, reply.text)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert json.loads(reply.body)["error"].startswith("since: ")


def test_without_since_the_whole_window_is_answered_as_before(lb_factory):
    lb: LB = wait_admin(lb_factory(servers=[0], admin={"host": "127.0.0.1", "port": 0, "token": TOKEN,
                                                       "series_resolution_s": 0.1, "series_points": 5}))
    whole = wait_for(lambda: len((s := api_json(lb, "GET", "/api/series"))["times"]) == 5 and s, 15,
                     what="a full window")
    assert set(whole) == {"resolution_s", "points", "times", "servers", "calls", "integrations", "full"}
    assert whole["full"] is True and len(whole["servers"]["bbb1"]["load"]) == 5
    assert api(lb, "GET", "/api/series?since=1", token=None).status == 401  # as guarded as the rest of /api/


@pytest.mark.browser
def test_the_page_asks_for_new_points_only_and_draws_the_same_window(lb_factory, sim, tmp_path):
    lb: LB = wait_admin(lb_factory(
        servers=[0, 1, 2], admin={"host": "127.0.0.1", "port": 0, "token": TOKEN, "series_resolution_s": 0.05,
                                  "series_points": 5000},
        balancer={"meeting_size": 1}))
    wait_for(lambda: all(s["status"] == "up" for s in api_json(lb, "GET", "/api/servers")), 15,
             what="every server up")
    for i in range(3):
        assert create(lb, f"page-room-{i}").field("returncode") == "SUCCESS"
    for server, count in (("bbb1", 9), ("bbb2", 4), ("bbb3", 1)):
        for room in sim.meetings(server):
            sim.control(f"/servers/{server}/meetings/{room}/participants", {"participants": count})
    wait_for(lambda: sum(s["participants"] for s in api_json(lb, "GET", "/api/servers")) == 14, 15,
             what="a poll to see the participants")
    wait_for(lambda: len(api_json(lb, "GET", "/api/series")["times"]) >= 20, 15, what="some history")

    # About fifteen polls of virtual time: the first asks for everything, the others only for what is new.
    page = lxml.html.fromstring(chromium(tmp_path / "profile", admin_url(lb) + f"/dashboard?token={TOKEN}",
                                         "--dump-dom", "--virtual-time-budget=30000"))
    whole = api_json(lb, "GET", "/api/series")
    assert page.get_element_by_id("error").get("hidden") is not None, "the page shows an error"
    plots = page.get_element_by_id("plots")
    assert plots.get("data-full-answers") == "1"
    assert int(plots.get("data-since-answers")) >= 10
    # Each poll takes real time (two fetches, six charts drawn): at 20 points a second, some came that way.
    assert int(plots.get("data-since-points")) >= 1
    # What the page holds after merging is the server's window up to the page's newest time.
    first, last = float(plots.get("data-first")), float(plots.get("data-last"))
    assert whole["times"][0] == first and last in whole["times"]
    upto = whole["times"].index(last) + 1
    assert int(plots.get("data-points")) == upto
    for plot, field in (("plot-server-load", "load"), ("plot-server-participants", "participants")):
        drawn = {p.get("data-name"): p for p in page.xpath(f'//figure[@id="{plot}"]//*[local-name()="path"]')}
        assert sorted(drawn) == ["bbb1", "bbb2", "bbb3"], (plot, sorted(drawn))
        for name, path in drawn.items():
            values = [v for v in whole["servers"][name][field][:upto] if v is not None]
            assert float(path.get("data-mean")) == pytest.approx(sum(values) / len(values), rel=1e-9), (plot, name)
            assert float(path.get("data-last")) == values[-1]
