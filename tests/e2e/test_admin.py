"""The admin listener end to end: a real bbb-lb with admin.port, simulated BBB servers, the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import LB, REPO, HttpReply, Simulator, free_port, http, wait_for

TOKEN = "t" * 24
SECRETS = ("secret-1", "secret-2", "secret-3", "secret-4", "lb-secret", TOKEN)


def admin_url(lb: LB) -> str:
    return f"http://127.0.0.1:{lb.config['admin']['port']}"


def api(lb: LB, method: str, path: str, body: Any = None, token: str | None = TOKEN,
        raw: bytes | None = None) -> HttpReply:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    return http(admin_url(lb) + path, method=method, data=data, headers=headers)


def api_json(lb: LB, method: str, path: str, body: Any = None) -> Any:
    reply = api(lb, method, path, body)
    assert reply.status < 300, (method, path, reply.status, reply.text)
    return json.loads(reply.body)


def cli(lb: LB, *args: str, check: bool = True, stdin: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "addons.cli", *args, "--config", str(lb.config_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, input=stdin)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def servers(lb: LB) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in api_json(lb, "GET", "/api/servers")}


def wait_admin(lb: LB) -> LB:
    """The admin listener comes up just after the API listener: wait for it too."""
    def up() -> bool:
        try:
            return http(admin_url(lb) + "/health", timeout=1).status in (200, 503)
        except OSError:
            return False

    wait_for(up, 15, what="the admin listener")
    return lb


def wait_up(lb: LB, *names: str) -> None:
    wait_for(lambda: all(servers(lb).get(n, {}).get("status") == "up" for n in names), 15,
             what=f"{names} to be up")


@pytest.fixture
def admin_lb(lb_factory):  # type: ignore[no-untyped-def]
    def start(**kwargs: Any) -> LB:
        lb = lb_factory(admin={"host": "127.0.0.1", "port": 0, "token": TOKEN}, **kwargs)
        return wait_admin(lb)

    return start


def create(lb: LB, meeting_id: str, secret: str | None = None, **params: str) -> HttpReply:
    return lb.call("create", {"meetingID": meeting_id, "name": meeting_id, "moderatorPW": "mp", "attendeePW": "ap",
                              **params}, secret=secret)


def server_of(sim: Simulator, meeting_id: str) -> str:
    holders = [s["name"] for s in sim.control("/servers") if meeting_id in s["meetings"]]
    assert len(holders) == 1, (meeting_id, holders)
    return holders[0]


def test_token_health_metrics_errors_and_no_secrets(admin_lb, sim):
    lb = admin_lb(servers=[0, 1])
    for token in (None, "wrong-token-wrong-token", TOKEN + "x"):
        reply = api(lb, "GET", "/api/servers", token=token)
        assert reply.status == 401 and json.loads(reply.body) == {"error": "a valid admin token is required"}
        assert api(lb, "POST", "/api/servers/bbb1/drain", token=token).status == 401
    assert servers(lb).keys() == {"bbb1", "bbb2"}
    wait_up(lb, "bbb1", "bbb2")

    health = http(admin_url(lb) + "/health")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"
    assert json.loads(health.body)["servers_usable"] == 2

    assert create(lb, "metered").field("returncode") == "SUCCESS"
    assert lb.call("isMeetingRunning", {"meetingID": "metered"}).field("running") == "false"
    assert lb.call("getMeetings").field("returncode") == "SUCCESS"
    assert lb.call("getMeetings", secret="wrong").field("messageKey") == "checksumError"
    metrics = http(admin_url(lb) + "/metrics")  # open: scrapers carry no token
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'bbb_lb_requests_total{call="create",result="SUCCESS"} 1' in text
    assert 'bbb_lb_requests_total{call="getMeetings",result="checksumError"} 1' in text
    assert 'bbb_lb_request_duration_seconds_count{call="getMeetings"} 2' in text
    assert re.search(r'bbb_lb_request_duration_seconds_bucket\{call="create",le="\+Inf"\} 1\.0\n', text)
    assert 'bbb_lb_server_status{server="bbb1"} 2' in text and 'bbb_lb_server_status{server="bbb2"} 2' in text
    assert 'bbb_lb_server_disabled{server="bbb1"} 0' in text
    assert 'bbb_lb_server_disable_state{server="bbb1"} 3' in text
    assert f'bbb_lb_server_meetings{{server="{server_of(sim, "metered")}"}} 1' in text
    assert re.search(r'bbb_lb_server_load\{server="bbb1"\} \d', text)
    assert "bbb_lb_meetings 1.0\n" in text and "bbb_lb_meeting_events 1.0\n" in text
    for name in ("bbb_lb_server_participants", "bbb_lb_server_draining", "bbb_lb_server_poll_errors_total",
                 "bbb_lb_store_writes_total", "bbb_lb_store_write_seconds_total", "bbb_lb_events_queued"):
        assert f"# TYPE {name} " in text, name
    assert float(re.search(r"^bbb_lb_store_writes_total (\S+)$", text, re.M).group(1)) >= 1  # type: ignore[union-attr]

    # Errors are JSON with a status that says what went wrong, never a traceback.
    cases = [
        (api(lb, "POST", "/api/servers", raw=b"{not json"), 400, "not valid JSON"),
        (api(lb, "POST", "/api/servers", [1, 2]), 400, "JSON object"),
        (api(lb, "POST", "/api/servers", {"name": "x", "url": "ftp://nope", "secret": "s"}), 400, "http(s) URL"),
        (api(lb, "POST", "/api/servers", {"name": "bbb1", "url": "http://127.0.0.1:9/", "secret": "s"}), 400,
         "exists already"),
        (api(lb, "POST", "/api/servers", {"name": "x", "url": "http://h/", "secret": "${HOME}"}), 400, "config file"),
        (api(lb, "POST", "/api/servers", {"name": "x", "url": "http://h/", "secret": "s", "port": 1}), 400, "unknown"),
        (api(lb, "POST", "/api/servers/nope/state", {"state": "disabled"}), 404, "no server named 'nope'"),
        (api(lb, "POST", "/api/servers/bbb1/state", {"state": "sideways"}), 400, "enabled, disabled or auto"),
        (api(lb, "POST", "/api/servers/bbb1/panic", {"keep_state": "yes"}), 400, "true or false"),
        (api(lb, "DELETE", "/api/integrations/nope"), 404, "no integration"),
        (api(lb, "DELETE", "/api/integrations/default"), 400, "config"),
        (api(lb, "PUT", "/api/integrations/new", {"enabled": True}), 400, "secret: is required"),
        (api(lb, "GET", "/api/nothing-here"), 404, "Not Found"),
        (api(lb, "PUT", "/api/servers"), 405, "Method Not Allowed"),
    ]
    for reply, status, message in cases:
        assert reply.status == status, (reply.status, reply.text)
        assert reply.headers["Content-Type"].startswith("application/json")
        assert message in json.loads(reply.body)["error"], reply.text
        assert "Traceback" not in reply.text

    # No response, page or log line shows a backend or integration secret, or the token.
    for path in ("/api/servers", "/api/integrations", "/api/status", "/api/dashboard"):
        body = api(lb, "GET", path).text
        assert not any(secret in body for secret in SECRETS), path
    assert not any(secret in text for secret in SECRETS)
    assert not any(secret in http(admin_url(lb) + "/health").text for secret in SECRETS)
    status = api_json(lb, "GET", "/api/status")
    assert status["servers"] == 2 and status["servers_up"] == 2 and status["meetings"] == 1

    # Every server disabled: no new meeting can be placed, and /health says so.
    for name in ("bbb1", "bbb2"):
        assert api_json(lb, "POST", f"/api/servers/{name}/state", {"state": "disabled"})["disable_state"] == 1
    health = http(admin_url(lb) + "/health")
    assert health.status == 503
    assert json.loads(health.body)["reason"] == "no server can take new meetings (2 disabled)"
    assert create(lb, "nowhere").field("returncode") == "FAILED"
    assert not any(secret in lb.log() for secret in SECRETS[:4] + (TOKEN,))


def test_servers_from_the_cli_at_runtime_and_after_restart(admin_lb, sim):
    lb = admin_lb(servers=[0, 1])
    wait_up(lb, "bbb1", "bbb2")
    listing = cli(lb, "servers", "list").stdout.splitlines()
    header = listing[0]
    assert header.split() == ["NAME", "STATUS", "STATE", "DRAINING", "MEETINGS", "PARTICIPANTS", "LOAD", "URL"]
    assert [row.split()[:4] for row in listing[1:]] == [["bbb1", "up", "auto", "no"], ["bbb2", "up", "auto", "no"]]
    for row in listing[1:]:  # aligned: every column starts where its header does
        assert row.index("http://") == header.index("URL")
        assert row[header.index("STATE")] == "a"

    assert create(lb, "m1").field("returncode") == "SUCCESS" and server_of(sim, "m1") == "bbb1"
    assert create(lb, "m2").field("returncode") == "SUCCESS" and server_of(sim, "m2") == "bbb2"
    third = sim.servers[2]
    # The secret comes on stdin ("-"), so it is not in the process list.
    added = cli(lb, "servers", "add", "bbb3", third["url"], "-", "--checksum", "sha1", "--max-meetings", "50",
                stdin=third["secret"] + "\n")
    assert added.stdout.startswith("added bbb3: ")
    wait_up(lb, "bbb3")
    assert create(lb, "m3").field("returncode") == "SUCCESS"
    assert server_of(sim, "m3") == "bbb3"  # the new, empty server takes the next meeting
    assert all(r["algorithm"] == "sha1" and r["checksum_ok"] for r in sim.requests("bbb3"))

    assert "disabled" in cli(lb, "servers", "disable", "bbb3").stdout
    for meeting in ("m4", "m5"):
        assert create(lb, meeting).field("returncode") == "SUCCESS"
        assert server_of(sim, meeting) != "bbb3"
    assert servers(lb)["bbb3"]["disable_state"] == 1
    assert "auto" in cli(lb, "servers", "auto", "bbb3").stdout
    assert create(lb, "m6").field("returncode") == "SUCCESS" and server_of(sim, "m6") == "bbb3"
    api_json(lb, "POST", "/api/servers/bbb2/state", {"state": "disabled"})
    fourth = sim.servers[3]
    api_json(lb, "POST", "/api/servers", {"name": "bbb4", "url": fourth["url"], "secret": fourth["secret"]})
    removed = cli(lb, "servers", "remove", "bbb4").stdout
    assert removed == "removed bbb4 (0 meetings forgotten)\n"

    lb.restart()
    wait_admin(lb)
    after = servers(lb)
    assert list(after) == ["bbb1", "bbb2", "bbb3"]  # added at runtime: kept; removed at runtime: gone
    assert after["bbb2"]["disable_state"] == 1 and after["bbb3"]["disable_state"] == 3
    wait_up(lb, "bbb1", "bbb3")
    assert create(lb, "m7").field("returncode") == "SUCCESS" and server_of(sim, "m7") != "bbb2"
    assert lb.call("getMeetingInfo", {"meetingID": "m3"}).field("meetingID") == "m3"

    api_json(lb, "DELETE", "/api/servers/bbb3")
    assert "bbb3" not in servers(lb)
    assert lb.call("getMeetingInfo", {"meetingID": "m3"}).field("messageKey") == "notFound"  # forgotten with it
    missing = cli(lb, "servers", "drain", "bbb9", check=False)
    assert missing.returncode == 1 and missing.stderr == "bbb-lb: no server named 'bbb9'\n"


def test_drain_keeps_meetings_joinable_then_disables_and_panic_ends_meetings(admin_lb, sim):
    lb = admin_lb(servers=[0, 1])
    wait_up(lb, "bbb1", "bbb2")
    assert create(lb, "d1").field("returncode") == "SUCCESS" and server_of(sim, "d1") == "bbb1"
    assert create(lb, "d2").field("returncode") == "SUCCESS" and server_of(sim, "d2") == "bbb2"

    drained = cli(lb, "servers", "drain", "bbb1").stdout
    assert "draining" in drained
    assert servers(lb)["bbb1"]["draining"] is True
    join = lb.call("join", {"meetingID": "d1", "fullName": "Ann", "password": "ap"})
    assert join.status == 302 and join.headers["Location"].startswith(sim.servers[0]["url"])
    assert create(lb, "d3").field("returncode") == "SUCCESS"
    assert server_of(sim, "d3") == "bbb2"  # bbb1 would win the tie were it not draining

    assert lb.call("end", {"meetingID": "d1", "password": "mp"}).field("returncode") == "SUCCESS"
    wait_for(lambda: servers(lb)["bbb1"]["disable_state"] == 1 and not servers(lb)["bbb1"]["draining"], 10,
             what="bbb1 to finish draining")

    panic = cli(lb, "servers", "panic", "bbb2").stdout
    assert "2 meetings ended, 2 forgotten" in panic
    assert sim.meetings("bbb2") == []
    for meeting in ("d2", "d3"):
        assert lb.call("getMeetingInfo", {"meetingID": meeting}).field("messageKey") == "notFound"
    assert servers(lb)["bbb2"]["disable_state"] == 1
    assert http(admin_url(lb) + "/health").status == 503


def test_integrations_from_the_cli(admin_lb, sim):
    lb = admin_lb(servers=[0])
    wait_up(lb, "bbb1")
    added = cli(lb, "integrations", "add", "moodle", "--secret", "moodle-secret-1", "--no-record").stdout
    assert added.startswith("added moodle: enabled, no recording, 1 secret(s)")
    assert lb.call("isMeetingRunning", {"meetingID": "x"}, secret="moodle-secret-1").field("returncode") == "SUCCESS"
    denied = create(lb, "rec", secret="moodle-secret-1", record="true")
    assert denied.field("messageKey") == "permissionDenied"
    assert create(lb, "mine", secret="moodle-secret-1").field("returncode") == "SUCCESS"

    again = cli(lb, "integrations", "add", "moodle", "--secret", "other-secret-9", check=False)
    assert again.returncode == 1 and "exists already" in again.stderr

    cli(lb, "integrations", "disable", "moodle")
    reply = lb.call("isMeetingRunning", {"meetingID": "x"}, secret="moodle-secret-1")
    assert reply.field("messageKey") == "permissionDenied"
    assert reply.field("message") == "This application is not currently allowed to access this API."
    assert lb.call("isMeetingRunning", {"meetingID": "x"}).field("returncode") == "SUCCESS"  # default unaffected

    api_json(lb, "PUT", "/api/integrations/moodle", {"enabled": True, "secret": "moodle-secret-2",
                                                     "previous_secret": "moodle-secret-1"})
    for secret in ("moodle-secret-1", "moodle-secret-2"):
        assert lb.call("isMeetingRunning", {"meetingID": "x"}, secret=secret).field("returncode") == "SUCCESS"
    listing = cli(lb, "integrations", "list").stdout
    assert re.search(r"^moodle\s+yes\s+no\s+1\s+0\s+-\s+0\s+record 1\s+2$", listing, re.M), listing
    assert "moodle-secret" not in listing

    lb.restart()
    wait_admin(lb)
    assert lb.call("isMeetingRunning", {"meetingID": "x"}, secret="moodle-secret-2").field("returncode") == "SUCCESS"
    api_json(lb, "DELETE", "/api/integrations/moodle")
    assert lb.call("getMeetings", secret="moodle-secret-2").field("messageKey") == "checksumError"

    # The connection is explained when it fails.
    wrong = cli(lb, "servers", "list", "--token", "x" * 20, check=False)
    assert wrong.returncode == 1 and "admin token was refused" in wrong.stderr
    nobody = cli(lb, "servers", "list", "--admin-url", f"http://127.0.0.1:{free_port()}", check=False)
    assert nobody.returncode == 1 and nobody.stderr.strip().endswith("is bbb-lb running with admin.port set?")
    assert len(nobody.stderr.strip().splitlines()) == 1
