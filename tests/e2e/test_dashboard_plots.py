"""The dashboard's plots in a real headless Chromium, after a scripted minute of traffic on three servers.

The series run at 0.5 s a point here (``admin.series_resolution_s``), so the "minute" is a few seconds
of wall time and still leaves many points; every step waits for what it caused, never for a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LB, http, wait_for
from tests.e2e.test_admin import TOKEN, admin_url, api_json, create, server_of, wait_admin
from tests.e2e.test_dashboard import chromium

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/bbb-lb-dashboard-plots.png")
SERVER_COLOURS = {"bbb1": (0x1F, 0x77, 0xB4), "bbb2": (0xD6, 0x27, 0x28), "bbb3": (0x2C, 0xA0, 0x2C)}  # plots.js
MOODLE_SECRET = "moodle-secret-for-plots"
FINAL = [40, 12, 3]  # participants at the end, busiest first
PHASES = 6


def metric_values(lb: LB, name: str, label: str) -> dict[str, float]:
    text = http(admin_url(lb) + "/metrics").text
    return {s.labels[label]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def last_y(path: Any) -> float:
    """The y of the newest point a plotted line has (SVG grows downward: smaller is higher)."""
    return float(re.findall(r"[ML]([\d.]+),([\d.]+)", path.get("d"))[-1][1])


def lines(page: Any, plot: str) -> dict[str, Any]:
    return {p.get("data-name"): p for p in page.xpath(f'//figure[@id="{plot}"]//*[local-name()="path"]')
            if "limit" not in p.get("class")}


def colour_pixels(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return sum(count for count, pixel in image.getcolors(maxcolors=1 << 20)
               if all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True)))


def test_a_minute_of_traffic_is_drawn_one_line_per_server_busiest_highest(lb_factory, sim, tmp_path):
    lb: LB = wait_admin(lb_factory(
        servers=[0, 1, 2],
        admin={"host": "127.0.0.1", "port": 0, "token": TOKEN, "series_resolution_s": 0.5,
               "series_points": 240},
        balancer={"meeting_size": 1},  # a fresh meeting weighs one participant: creates spread over the three
        integrations=[{"name": "moodle", "secret": MOODLE_SECRET, "max_meetings": 3, "max_participants": 10}]))
    wait_for(lambda: all(s["status"] == "up" for s in api_json(lb, "GET", "/api/servers")), 15,
             what="every server up")
    rooms = [f"plots-room-{i}" for i in range(3)]
    for room in rooms:
        assert create(lb, room).field("returncode") == "SUCCESS"
    holders = [server_of(sim, room) for room in rooms]
    assert sorted(holders) == ["bbb1", "bbb2", "bbb3"], holders  # one meeting on each server
    busiest, middle, quietest = holders
    assert create(lb, "moodle-room", secret=MOODLE_SECRET).field("returncode") == "SUCCESS"
    moodle_server = server_of(sim, "moodle-room")
    points_before = len(api_json(lb, "GET", "/api/series")["times"])

    for phase in range(1, PHASES + 1):
        counts = [round(final * phase / PHASES) for final in FINAL]
        for room, server, count in zip(rooms, holders, counts, strict=True):
            sim.control(f"/servers/{server}/meetings/{room}/participants", {"participants": count})
        for _ in range(phase):
            assert lb.call("isMeetingRunning", {"meetingID": rooms[0]}).field("running") == "true"
            assert lb.call("join", {"meetingID": "no-such-room", "fullName": "Eve", "password": "ap"}).status == 200
        if phase <= 2:  # two people join the moodle meeting: its participants line rises toward the limit
            join = lb.call("join", {"meetingID": "moodle-room", "fullName": f"M{phase}", "password": "ap"},
                           secret=MOODLE_SECRET)
            assert join.status == 302 and http(join.headers["Location"]).status == 302
        expected = dict(zip(holders, counts, strict=True))
        expected[moodle_server] += min(phase, 2)
        wait_for(lambda expected=expected: {s["name"]: s["participants"]
                                            for s in api_json(lb, "GET", "/api/servers")} == expected,
                 10, what=f"a poll to see phase {phase}")
    final = dict(zip(holders, FINAL, strict=True))
    final[moodle_server] += 2

    def settled() -> dict[str, Any] | None:
        series = api_json(lb, "GET", "/api/series")
        last = {name: values["participants"][-1] for name, values in series["servers"].items()}
        enough = len(series["times"]) - points_before >= PHASES * 2
        return series if enough and last == final else None

    series = wait_for(settled, 15, what="the series to hold the whole scripted minute")
    assert series["resolution_s"] == 0.5 and len(series["times"]) <= 240
    participants = {name: values["participants"] for name, values in series["servers"].items()}
    # The history rose with the traffic: the busiest server's line went up through the phases.
    climbing = [v for v in participants[busiest][points_before:] if v is not None]
    assert climbing[0] < climbing[-1] == final[busiest] and climbing == sorted(climbing)
    def total(values: list[float | None]) -> float:  # null before the call was first answered
        return sum(v for v in values if v is not None)

    assert total(series["calls"]["join"]["failed"]) > 0 and total(series["calls"]["isMeetingRunning"]["failed"]) == 0
    # The same meaning as /metrics: the last point is the gauge a scrape reads now.
    assert metric_values(lb, "bbb_lb_server_participants", "server") == {
        name: float(values[-1]) for name, values in participants.items()}
    assert metric_values(lb, "bbb_lb_requests_failed_total", "call")["join"] == 21  # 1 + 2 + ... + 6 refused joins

    url = admin_url(lb) + f"/dashboard?token={TOKEN}"
    page = lxml.html.fromstring(chromium(tmp_path / "profile", url, "--dump-dom"))
    assert page.get_element_by_id("error").get("hidden") is not None, "the page shows an error"
    for plot, field in (("plot-server-load", "load"), ("plot-server-participants", "participants")):
        drawn = lines(page, plot)
        assert sorted(drawn) == ["bbb1", "bbb2", "bbb3"], (plot, list(drawn))  # one line per server
        for name, path in drawn.items():  # the page draws what the API holds
            assert float(path.get("data-last")) == pytest.approx(series["servers"][name][field][-1], abs=0.5)
        heights = sorted(drawn, key=lambda name: last_y(drawn[name]))
        assert heights[0] == busiest, (plot, heights)  # the busiest server is the highest line
        if field == "participants":
            assert heights == [busiest, middle, quietest]
    failed = lines(page, "plot-call-failed")
    assert float(failed["join"].get("data-mean")) > 0 and float(failed["isMeetingRunning"].get("data-mean")) == 0
    assert {"create", "join", "isMeetingRunning"} <= set(lines(page, "plot-call-requests"))
    moodle = page.xpath('//figure[@id="plot-integration-participants"]//*[local-name()="path"]'
                        '[@data-name="moodle"]')
    assert {p.get("data-kind"): float(p.get("data-last")) for p in moodle} == {"integration": 2.0, "limit": 10.0}
    integrations = {i["name"]: i for i in api_json(lb, "GET", "/api/integrations")}
    assert integrations["moodle"]["participants"] == 2 and integrations["moodle"]["max_participants"] == 10

    chromium(tmp_path / "profile", url, f"--screenshot={SCREENSHOT}", "--window-size=1200,900", "--hide-scrollbars")
    with Image.open(SCREENSHOT) as shot:
        image = shot.convert("RGB")
    # Two charts draw each server as a line across most of a ~520 px plot; a legend mark is 14 x 2 px.
    drawn = {name: colour_pixels(image, colour) for name, colour in SERVER_COLOURS.items()}
    assert all(count > 400 for count in drawn.values()), drawn
