"""The gateway end to end: a real bbb-lb process, simulated BBB servers, a real client library.

What the gateway decides is tested in process (tests/core/); here: what only a real process shows,
the client library's view, requests as bytes on the wire, bodies too large to read, and restarts.
"""

from __future__ import annotations

import signal
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
from bigbluebutton_api_python import BigBlueButton

from tests.conftest import LB, Simulator, http, make_lb, wait_for


@pytest.fixture(scope="module")
def quiet_lb(tmp_path_factory: pytest.TempPathFactory, sim: Simulator) -> Iterator[LB]:
    """One process for the tests that only send bad input: they change nothing, so they share it."""
    lb = make_lb(tmp_path_factory.mktemp("quiet-lb"), sim).start()
    yield lb
    lb.stop()


def server_of(sim, meeting_id: str) -> str:
    holders = [s["name"] for s in sim.control("/servers") if meeting_id in s["meetings"]]
    assert len(holders) == 1, holders
    return holders[0]


def test_client_library_meetings_spread_and_stick(lb, sim):
    bbb = BigBlueButton(lb.api, lb.secret)
    for i in range(10):
        response = bbb.create_meeting(f"room-{i}", params={"name": f"Room {i}", "attendeePW": "ap",
                                                           "moderatorPW": "mp"})
        assert response.get_field("returncode") == "SUCCESS"
    placement = {f"room-{i}": server_of(sim, f"room-{i}") for i in range(10)}
    per_server = Counter(placement.values())
    assert len(per_server) == 5 and max(per_server.values()) <= 3, per_server

    for name in {s["name"] for s in sim.servers}:
        sim.control(f"/servers/{name}/requests", method="DELETE")
    for meeting_id, server in placement.items():
        assert bbb.is_meeting_running(meeting_id).get_field("running") == "false"
        info = bbb.get_meeting_info(meeting_id)
        assert info.get_field("meetingID") == meeting_id
        calls = [r for r in sim.requests(server) if r["call"] in ("isMeetingRunning", "getMeetingInfo")
                 and f"meetingID={meeting_id}" in r["raw_query"]]
        assert len(calls) == 2 and all(r["checksum_ok"] for r in calls)
        assert all(r["algorithm"] == "sha256" for r in calls)


def test_client_library_reads_merged_meetings_and_recordings(lb_factory, sim):
    lb = lb_factory(recordings={"sync_interval_s": 0.2})  # getRecordings answers from the synced index
    bbb = BigBlueButton(lb.api, lb.secret)
    for i in range(5):
        reply = lb.call("create", {"meetingID": f"gm-{i}", "name": f"Meeting {i}", "preferredServer": f"bbb{i + 1}"})
        assert reply.field("returncode") == "SUCCESS", reply.text
    meetings = bbb.get_meetings().get_field("meetings")["meeting"]
    assert sorted(str(m["meetingID"]) for m in meetings) == [f"gm-{i}" for i in range(5)]
    for i, server in enumerate(("bbb1", "bbb2", "bbb3")):
        sim.control(f"/servers/{server}/recordings", {"meetingID": f"gm-{i}", "recordID": f"rec-{i}"})

    def listed() -> list[str]:
        recordings = bbb.get_recordings()
        assert recordings.get_field("returncode") == "SUCCESS"
        found = recordings.get_field("recordings") or {}
        items = found.get("recording", []) if isinstance(found, dict) else []
        return sorted(str(r["recordID"]) for r in (items if isinstance(items, list) else [items]))

    wait_for(lambda: listed() == ["rec-0", "rec-1", "rec-2"], what="the recordings in the index")


def test_join_redirects_straight_to_the_meeting_server(lb, sim):
    bbb = BigBlueButton(lb.api, lb.secret)
    bbb.create_meeting("join-me", params={"name": "Join me", "attendeePW": "ap", "moderatorPW": "mp"})
    server = server_of(sim, "join-me")
    url = bbb.get_join_meeting_url("Alice Ä", "join-me", "mp", params={})
    reply = http(url)
    assert reply.status == 302
    location = reply.headers["Location"]
    backend = next(s for s in sim.servers if s["name"] == server)
    assert location.startswith(backend["url"] + "api/join?")
    page = http(location)
    assert page.status == 302  # the simulated server accepts the re-signed join and sends the browser on
    client = http(page.headers["Location"])
    assert client.status == 200 and "Alice" in client.text and "join-me" in client.text
    running = bbb.is_meeting_running("join-me")
    assert running.get_field("running") == "true"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_the_meeting_map_survives_a_restart(lb, sim, stop):
    created = {}
    for i in range(6):
        lb.call("create", {"meetingID": f"keep-{i}", "name": "Keep", "moderatorPW": "mp"})
        created[f"keep-{i}"] = server_of(sim, f"keep-{i}")
    code = lb.stop(stop)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
    lb.start()
    for meeting_id, server in created.items():
        join = lb.call("join", {"meetingID": meeting_id, "fullName": "After", "password": "mp"})
        assert join.status == 302
        target = next(s for s in sim.servers if s["name"] == server)
        assert join.headers["Location"].startswith(target["url"])


@pytest.mark.parametrize("target", [
    "/bigbluebutton/api/create?meetingID=%zz&checksum=%%%",
    "/bigbluebutton/api/create?" + "a=" + "x" * 20000 + "&checksum=1",
    "/bigbluebutton/api/getMeetings?checksum=" + "0" * 40,
    "/bigbluebutton/api/isMeetingRunning?meetingID=%00%01&checksum=%C3%A9",
    "/bigbluebutton/api/../../etc/passwd",
])
def test_hostile_requests_get_bbb_xml(quiet_lb, target):
    reply = http(quiet_lb.url + target)
    assert reply.headers.get("Content-Type") == "text/xml;charset=utf-8", reply.text[:200]
    assert reply.field("returncode") == "FAILED" and reply.field("messageKey") and reply.field("message")


@pytest.mark.parametrize("raw", [
    b"GET /bigbluebutton/api/isMeetingRunning?meetingID=\xc3\xa9\xff&checksum=\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /bigbluebutton/api/create?checksum=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n\r\n\xff\xfe\x00ab",
])
def test_raw_bytes_on_the_wire_get_bbb_xml(quiet_lb, raw):
    with socket.create_connection(("127.0.0.1", quiet_lb.port), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while b"</response>" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"text/xml;charset=utf-8" in head, data[:300]
    assert b"<returncode>FAILED</returncode>" in body and b"<messageKey>" in body


def test_an_oversized_body_is_refused_before_it_is_read(quiet_lb):
    url = quiet_lb.sign("create", "meetingID=big&name=Big")
    too_big = http(url, method="POST", data=b"<modules/>" + b" " * (65 * 1024 * 1024),
                   headers={"Content-Type": "application/xml"}, timeout=60)
    assert too_big.field("messageKey") == "requestTooLarge"
