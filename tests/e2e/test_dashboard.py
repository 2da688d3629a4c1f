"""The dashboard in a real headless Chromium: it signs in with ?token=, renders, and follows the LB."""

from __future__ import annotations

import subprocess
from pathlib import Path

import lxml.html
import pytest

from tests.conftest import LB, http, require_chromium, wait_for
from tests.e2e.test_admin import TOKEN, admin_url, api_json, create, wait_admin

SCREENSHOT = Path("/tmp/bbb-lb-dashboard.png")

pytestmark = pytest.mark.browser


def chromium(profile: Path, url: str, *extra: str) -> str:
    """Load ``url``, let its scripts run for a few (virtual) seconds, and answer the DOM or nothing."""
    done = subprocess.run(
        [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def server_rows(dom: str) -> dict[str, dict[str, str]]:
    page = lxml.html.fromstring(dom)
    assert page.get_element_by_id("error").get("hidden") is not None, "the page shows an error"
    columns = [th.text_content().strip() for th in page.xpath('//table[@id="servers"]/thead/tr/th')]
    assert columns == ["Name", "Status", "disableState", "Draining", "Meetings", "Participants", "Load", "URL"]
    rows = {}
    for row in page.xpath('//table[@id="servers"]/tbody/tr[@data-server]'):
        cells = dict(zip(columns, (c.text_content().strip() for c in row.xpath("td")), strict=True))
        rows[row.get("data-server")] = {**cells, "status_word": row.xpath("td[2]/span")[0].text.strip()}
    return rows


def test_dashboard_shows_servers_and_follows_a_failure(lb_factory, sim, tmp_path):
    lb: LB = wait_admin(lb_factory(servers=[0, 1, 2],
                                   admin={"host": "127.0.0.1", "port": 0, "token": TOKEN}))
    wait_for(lambda: all(s["status"] == "up" for s in api_json(lb, "GET", "/api/servers")), 15,
             what="every server up")
    assert create(lb, "dashboard-room").field("returncode") == "SUCCESS"
    join = lb.call("join", {"meetingID": "dashboard-room", "fullName": "Ann", "password": "ap"})
    assert join.status == 302 and http(join.headers["Location"]).status == 302  # Ann is in the meeting
    wait_for(lambda: api_json(lb, "GET", "/api/servers")[0]["participants"] == 1, 10, what="a poll to count Ann")
    api_json(lb, "POST", "/api/servers/bbb1/drain")
    api_json(lb, "POST", "/api/servers/bbb3/state", {"state": "disabled"})

    # Without the token the page is refused; with it, a cookie is set and the token leaves the URL.
    assert http(admin_url(lb) + "/dashboard").status == 401
    assert http(admin_url(lb) + "/dashboard?token=wrong").status == 401
    signed_in = http(admin_url(lb) + f"/dashboard?token={TOKEN}")
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/dashboard"
    assert "HttpOnly" in signed_in.headers["Set-Cookie"] and TOKEN not in signed_in.headers["Set-Cookie"]

    url = admin_url(lb) + f"/dashboard?token={TOKEN}"
    rows = server_rows(chromium(tmp_path / "profile", url, "--dump-dom"))
    assert list(rows) == ["bbb1", "bbb2", "bbb3"]
    assert all(row["status_word"] == "up" for row in rows.values()), rows
    assert [row["Meetings"] for row in rows.values()] == ["1", "0", "0"]
    assert [row["Participants"] for row in rows.values()] == ["1", "0", "0"]
    assert rows["bbb1"]["disableState"] == "auto" and rows["bbb1"]["Draining"] == "yes"
    assert rows["bbb3"]["disableState"] == "disabled" and rows["bbb3"]["Draining"] == "no"
    assert rows["bbb2"]["URL"] == sim.servers[1]["url"]
    dom = chromium(tmp_path / "profile", url, "--dump-dom")
    events = lxml.html.fromstring(dom).xpath('//table[@id="events"]/tbody/tr')
    calls = [tuple(td.text_content() for td in row.xpath("td")[1:6]) for row in events]
    assert ("join", "default", "dashboard-room", "bbb1", "redirect") in calls
    assert ("create", "default", "dashboard-room", "bbb1", "SUCCESS") in calls

    sim.fault("bbb2", "refuse")
    wait_for(lambda: api_json(lb, "GET", "/api/servers")[1]["status"] in ("down", "unreachable"), 10,
             what="bbb2 to be marked unreachable")
    rows = server_rows(chromium(tmp_path / "profile", url, "--dump-dom"))
    assert rows["bbb2"]["status_word"] == "unreachable"
    assert "connection failed" in rows["bbb2"]["Status"]  # the poll error is shown under the status
    assert rows["bbb1"]["status_word"] == "up"

    chromium(tmp_path / "profile", url, f"--screenshot={SCREENSHOT}", "--window-size=1200,800",
             "--hide-scrollbars")
    assert SCREENSHOT.stat().st_size > 10_000
