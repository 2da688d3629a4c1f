"""Rules and limits through a real ``bbb-lb run``: the real client library, the CLI, /metrics, the dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from urllib.parse import parse_qsl

import lxml.html
import pytest
from bigbluebutton_api_python import BigBlueButton

from tests.conftest import REPO, http, wait_for
from tests.e2e.test_admin import TOKEN, admin_url, api, api_json, cli, wait_admin
from tests.e2e.test_dashboard import chromium

MOODLE_SECRET = "moodle-secret-e2e"


def create_query(sim, meeting_id: str) -> dict[str, str]:
    """The create the simulated server received for ``meeting_id``, as parameters; its checksum verified."""
    for server in sim.servers:
        for request in sim.requests(server["name"]):
            if request["call"] == "create" and f"meetingID={meeting_id}&" in request["raw_query"] + "&":
                assert request["checksum_ok"], request
                return dict(parse_qsl(request["raw_query"]))
    raise AssertionError(f"no create of {meeting_id}")


@pytest.fixture
def rules_lb(lb_factory):  # type: ignore[no-untyped-def]
    return wait_admin(lb_factory(
        servers=[0], admin={"host": "127.0.0.1", "port": 0, "token": TOKEN},
        rules={"join": {"userdata-bbb_auto_join_audio": {"default": "true"}}},
        integrations=[{"name": "moodle", "secret": MOODLE_SECRET, "max_participants": 2, "max_duration_minutes": 30,
                       "rules": {"create": {"record": {"override": False},
                                            "disabledFeatures": {"append": ["chat"]}}}}]))


def test_the_client_library_through_an_integration_with_rules(rules_lb, sim):
    lb = rules_lb
    wait_for(lambda: api_json(lb, "GET", "/api/servers")[0]["status"] == "up", 15, what="bbb1 up")
    bbb = BigBlueButton(lb.api, MOODLE_SECRET)
    created = bbb.create_meeting("lib-room", params={"name": "Library room", "attendeePW": "ap",
                                                     "moderatorPW": "mp", "record": "true", "duration": "120"})
    assert created.get_field("returncode") == "SUCCESS"
    sent = create_query(sim, "lib-room")
    assert (sent["record"], sent["duration"], sent["disabledFeatures"]) == ("false", "30", "chat")
    info = bbb.get_meeting_info("lib-room")
    assert (info.get_field("duration"), info.get_field("recording")) == ("30", "false")

    # Two places: the third join is refused with BBB's answer, not redirected.
    for name in ("Ann", "Bob"):
        reply = http(bbb.get_join_meeting_url(name, "lib-room", "ap", params={}))
        assert reply.status == 302, reply.text
        assert "userdata-bbb_auto_join_audio=true" in reply.headers["Location"]  # the global join rule
        assert http(reply.headers["Location"]).status == 302  # the backend takes the re-signed join
    third = http(bbb.get_join_meeting_url("Cyd", "lib-room", "ap", params={}))
    assert third.status == 200 and third.field("messageKey") == "permissionDenied"
    assert third.field("message") == "This application is not allowed to have any more participants."

    metrics = http(admin_url(lb) + "/metrics").text
    assert 'bbb_lb_integration_limit_hits_total{integration="moodle",kind="participants"} 1.0' in metrics
    assert 'bbb_lb_integration_meetings{integration="moodle"} 1.0' in metrics
    assert re.search(r'bbb_lb_integration_participants\{integration="moodle"\} 2\.0', metrics), metrics
    assert 'bbb_lb_integration_limit{integration="moodle",kind="participants"} 2.0' in metrics


def test_rules_from_the_cli_and_the_admin_api(rules_lb, sim):
    lb = rules_lb
    wait_for(lambda: api_json(lb, "GET", "/api/servers")[0]["status"] == "up", 15, what="bbb1 up")
    done = cli(lb, "integrations", "rules", "moodle", "create", "welcome", "default", "Hello from the LB")
    assert "welcome" in done.stdout and '"Hello from the LB"' in done.stdout
    cli(lb, "integrations", "rules", "moodle", "create", "record", "remove")
    cli(lb, "rules", "create", "maxParticipants", "max", "50")
    shown = cli(lb, "integrations", "rules", "moodle").stdout
    assert re.search(r"^create\s+welcome\s+default \"Hello from the LB\"$", shown, re.M), shown
    assert re.search(r"^create\s+maxParticipants\s+max 50$", shown, re.M), shown  # in force, from the global rules
    assert "max_duration_minutes: 30" in shown
    bad = cli(lb, "integrations", "rules", "moodle", "create", "meta_mconflb-guid", "override", "x", check=False)
    assert bad.returncode == 1 and "rules.create.meta_mconflb-guid: meta_mconflb-* parameters are reserved" in bad.stderr
    refused = api(lb, "PATCH", "/api/rules", {"create": {"duration": {"max": "long"}}})
    assert refused.status == 400 and "rules.create.duration: max must be a whole number" in refused.text
    listing = cli(lb, "integrations", "update", "moodle", "--max-participants", "none", "--no-limit-moderators").stdout
    assert "participants" not in listing and "meetings of at most 30 minutes" in listing, listing
    moodle = next(i for i in api_json(lb, "GET", "/api/integrations") if i["name"] == "moodle")
    assert (moodle["max_participants"], moodle["limit_moderators"]) == (None, False)

    bbb = BigBlueButton(lb.api, MOODLE_SECRET)
    assert bbb.create_meeting("cli-room", params={"name": "CLI room", "record": "true"}).get_field(
        "returncode") == "SUCCESS"
    sent = create_query(sim, "cli-room")
    assert (sent["welcome"], sent["record"], sent["maxParticipants"]) == ("Hello from the LB", "true", "50")

    lb.restart()
    wait_admin(lb)
    kept = api_json(lb, "GET", "/api/integrations/moodle/rules")
    assert kept["rules"] == {"create": {"disabledFeatures": {"append": ["chat"]},
                                        "welcome": {"default": "Hello from the LB"}}}
    assert api_json(lb, "GET", "/api/rules")["rules"]["create"] == {"maxParticipants": {"max": 50}}
    cli(lb, "rules", "--clear")
    assert api_json(lb, "GET", "/api/rules")["rules"] == {}
    cli(lb, "rules", "--reset")  # the config file's global rules again
    assert api_json(lb, "GET", "/api/rules")["rules"] == {"join": {"userdata-bbb_auto_join_audio": {"default": "true"}}}


def test_bad_rules_are_refused_at_load_naming_the_file_and_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"secret": "s" * 12, "integrations": [
        {"name": "moodle", "secret": "m" * 12, "rules": {"create": {"duration": {"cap": 10}}}}]}))
    done = subprocess.run([sys.executable, "-m", "addons.cli", "check-config", "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{config}: integrations[0].rules.create.duration: unknown operation 'cap'" in done.stderr + done.stdout


@pytest.mark.browser
def test_the_dashboard_shows_integrations_against_their_limits(rules_lb, sim, tmp_path):
    lb = rules_lb
    wait_for(lambda: api_json(lb, "GET", "/api/servers")[0]["status"] == "up", 15, what="bbb1 up")
    bbb = BigBlueButton(lb.api, MOODLE_SECRET)
    bbb.create_meeting("dash-room", params={"name": "Dash room", "attendeePW": "ap", "moderatorPW": "mp"})
    for name in ("Ann", "Bob"):  # they reach the meeting, so polls count them too
        assert http(http(bbb.get_join_meeting_url(name, "dash-room", "ap", params={})).headers["Location"]).status == 302
    assert http(bbb.get_join_meeting_url("Cyd", "dash-room", "ap", params={})).field("messageKey") == "permissionDenied"
    dom = chromium(tmp_path / "profile", admin_url(lb) + f"/dashboard?token={TOKEN}", "--dump-dom")
    page = lxml.html.fromstring(dom)
    columns = [th.text_content().strip() for th in page.xpath('//table[@id="integrations"]/thead/tr/th')]
    rows = {row.get("data-integration"): dict(zip(columns, (td.text_content().strip() for td in row.xpath("td")),
                                                  strict=True))
            for row in page.xpath('//table[@id="integrations"]/tbody/tr[@data-integration]')}
    assert rows["moodle"]["Participants"] == "2 / 2" and rows["moodle"]["Meetings"] == "1"
    assert rows["moodle"]["Max minutes"] == "30" and rows["moodle"]["Rules"] == "2"
    assert rows["moodle"]["Refused by limits"] == "participants 1"
    assert rows["default"]["Participants"] == "0"
    assert page.xpath('//table[@id="integrations"]//td[contains(@class, "at-limit")]')
