"""The core gateway end to end: a real bbb-lb process, simulated BBB servers, a real client library."""

from __future__ import annotations

import concurrent.futures
import signal
from collections import Counter
from urllib.parse import parse_qsl, urlsplit

import pytest
from bigbluebutton_api_python import BigBlueButton

from lb_core import checksum
from tests.conftest import http


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


def test_join_with_redirect_false_is_proxied(lb, sim):
    lb.call("create", {"meetingID": "xmljoin", "name": "Xml join", "moderatorPW": "mp", "attendeePW": "ap"})
    reply = lb.call("join", {"meetingID": "xmljoin", "fullName": "Bob", "password": "ap", "redirect": "false"})
    assert reply.status == 200
    assert reply.field("messageKey") == "successfullyJoined"
    assert reply.headers["Content-Type"] == "text/xml;charset=utf-8"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_every_checksum_algorithm_is_accepted(lb, algorithm):
    reply = lb.call("isMeetingRunning", {"meetingID": "nope"}, algorithm=algorithm)
    assert reply.field("returncode") == "SUCCESS" and reply.field("running") == "false"
    upper = lb.sign("isMeetingRunning", "meetingID=nope", algorithm=algorithm)
    head, digest = upper.rsplit("=", 1)
    assert http(f"{head}={digest.upper()}").xml().findtext("returncode") == "SUCCESS"


def test_wrong_and_missing_checksums_are_refused(lb, sim):
    wrong = lb.call("create", {"meetingID": "evil", "name": "Evil"}, secret="not-the-secret")
    assert (wrong.field("returncode"), wrong.field("messageKey")) == ("FAILED", "checksumError")
    assert wrong.field("message") == "Checksums do not match"
    missing = http(lb.api + "create?meetingID=evil&name=Evil")
    assert missing.field("messageKey") == "checksumError"
    assert missing.field("message") == "You must provide the checksum"
    bad_length = http(lb.api + "create?meetingID=evil&checksum=abc123")
    assert bad_length.field("messageKey") == "checksumError"
    assert all("evil" not in s["meetings"] for s in sim.control("/servers"))


@pytest.mark.parametrize("query", [
    "name=Room+%281%29+%26+co%21&meetingID=enc-1&moderatorPW=mp&attendeePW=ap",
    "meetingID=enc-2&name=Room%20two!&attendeePW=ap&moderatorPW=mp",
    "&meetingID=enc-3&name=it's*(fine)&moderatorPW=mp",
    "attendeePW=ap&moderatorPW=mp&name=Caf%C3%A9&meetingID=enc-4&welcome=",
])
def test_the_signed_query_reaches_the_backend_byte_for_byte(lb, sim, query):
    reply = http(lb.sign("create", query, algorithm="sha1"))
    assert reply.field("returncode") == "SUCCESS", reply.text
    meeting_id = dict(parse_qsl(query))["meetingID"]
    server = server_of(sim, meeting_id)
    forwarded = [r for r in sim.requests(server) if r["call"] == "create"][-1]
    assert forwarded["checksum_ok"]
    received = forwarded["raw_query"]
    assert received.startswith(query), (query, received)
    # Only the LB's own metadata follows the client's bytes, then the backend's checksum.
    tail = received[len(query):]
    assert "meta_mconflb-institution=default" in tail and "checksum=" in tail


def test_concurrent_creates_of_one_meeting_end_on_one_server(lb, sim):
    def create(_: int) -> str:
        return lb.call("create", {"meetingID": "race", "name": "Race", "attendeePW": "ap",
                                  "moderatorPW": "mp"}).field("returncode")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(16)))
    assert results.count("SUCCESS") == 16
    holders = [s["name"] for s in sim.control("/servers") if "race" in s["meetings"]]
    assert len(holders) == 1


def test_unknown_meetings_get_bbb_answers_locally(lb):
    assert lb.call("isMeetingRunning", {"meetingID": "ghost"}).field("running") == "false"
    for call in ("getMeetingInfo", "end"):
        reply = lb.call(call, {"meetingID": "ghost", "password": "mp"})
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "notFound")
    join = lb.call("join", {"meetingID": "ghost", "fullName": "A", "password": "x"})
    assert join.status == 200 and join.field("messageKey") == "notFound"
    missing = lb.call("getMeetingInfo", {})
    assert missing.field("messageKey") == "missingParamMeetingID"


def test_end_forgets_the_meeting(lb, sim):
    lb.call("create", {"meetingID": "ending", "name": "Ending", "moderatorPW": "mp"})
    server = server_of(sim, "ending")
    ended = lb.call("end", {"meetingID": "ending", "password": "mp"})
    assert ended.field("messageKey") == "sentEndMeetingRequest"
    assert "ending" not in sim.meetings(server)
    assert lb.call("getMeetingInfo", {"meetingID": "ending"}).field("messageKey") == "notFound"


def test_a_refusing_server_is_skipped_for_new_meetings(lb_factory, sim):
    lb = lb_factory(servers=[0, 1], monitor={"interval_s": 60, "timeout_s": 1})
    sim.fault("bbb1", "refuse")
    try:
        for i in range(4):
            reply = lb.call("create", {"meetingID": f"fo-{i}", "name": "Failover"})
            assert reply.field("returncode") == "SUCCESS", reply.text
            assert server_of(sim, f"fo-{i}") == "bbb2"
    finally:
        sim.fault("bbb1", "ok")


def test_a_hanging_server_gets_a_bounded_bbb_error(lb_factory, sim):
    lb = lb_factory(servers=[0], backend={"timeout_s": 1.0, "connect_timeout_s": 1.0},
                    monitor={"interval_s": 60, "timeout_s": 0.5})
    lb.call("create", {"meetingID": "slowpoke", "name": "Slow"})
    sim.fault("bbb1", "hang")
    try:
        reply = lb.call("getMeetingInfo", {"meetingID": "slowpoke"}, timeout=10)
        assert reply.field("returncode") == "FAILED"
        assert reply.field("messageKey") == "serverTimeout"
        broken = lb.call("isMeetingRunning", {"meetingID": "slowpoke"}, timeout=10)
        assert broken.field("returncode") == "FAILED"
    finally:
        sim.fault("bbb1", "ok")


def test_a_503_page_becomes_bbb_xml(lb_factory, sim):
    lb = lb_factory(servers=[0], monitor={"interval_s": 60, "timeout_s": 1})
    lb.call("create", {"meetingID": "err503", "name": "Err 503"})
    sim.fault("bbb1", "503")
    try:
        reply = lb.call("getMeetingInfo", {"meetingID": "err503"})
        assert reply.headers["Content-Type"] == "text/xml;charset=utf-8"
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "internalError")
    finally:
        sim.fault("bbb1", "ok")


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


def test_root_and_unknown_calls(lb):
    for path in ("bigbluebutton/api", "bigbluebutton/api/"):
        reply = http(f"{lb.url}/{path}")
        assert reply.status == 200 and reply.field("version") == "2.0"
        assert reply.field("custom/name") == "bbb-lb"
    unknown = lb.call("fooBar", {"meetingID": "x"})
    assert unknown.field("messageKey") == "unsupportedRequest"
    elsewhere = http(lb.url + "/favicon.ico")
    assert elsewhere.status == 404 and elsewhere.headers["Content-Type"] == "text/xml;charset=utf-8"


def test_form_post_bodies_are_accepted_as_bbb_does(lb, sim):
    body = "meetingID=formpost&name=Form+Post&moderatorPW=mp"
    legacy = checksum.legacy_params_query(parse_qsl(body))
    digest = checksum.compute("create", legacy, lb.secret, "sha1")
    reply = http(lb.api + "create", method="POST", data=f"{body}&checksum={digest}".encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    server_of(sim, "formpost")


def test_create_with_preupload_xml_passes_the_body_through(lb, sim):
    slides = b'<?xml version="1.0"?><modules><module name="presentation"><document url="http://x/a.pdf"/>' \
             b"</module></modules>"
    url = lb.sign("create", "meetingID=slides&name=Slides")
    reply = http(url, method="POST", data=slides, headers={"Content-Type": "application/xml"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    server = server_of(sim, "slides")
    forwarded = [r for r in sim.requests(server) if r["call"] == "create"][-1]
    assert forwarded["body_length"] == len(slides) and forwarded["content_type"].startswith("application/xml")


@pytest.mark.parametrize("target", [
    "/bigbluebutton/api/create?meetingID=%zz&checksum=%%%",
    "/bigbluebutton/api/create?" + "a=" + "x" * 20000 + "&checksum=1",
    "/bigbluebutton/api/getMeetings?checksum=" + "0" * 40,
    "/bigbluebutton/api/isMeetingRunning?meetingID=%00%01&checksum=%C3%A9",
    "/bigbluebutton/api/../../etc/passwd",
])
def test_hostile_requests_get_bbb_xml(lb, target):
    reply = http(lb.url + target)
    assert reply.headers.get("Content-Type") == "text/xml;charset=utf-8", reply.text[:200]
    assert reply.field("returncode") == "FAILED" and reply.field("messageKey") and reply.field("message")


@pytest.mark.parametrize("raw", [
    b"GET /bigbluebutton/api/isMeetingRunning?meetingID=\xc3\xa9\xff&checksum=\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /bigbluebutton/api/create?checksum=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n\r\n\xff\xfe\x00ab",
])
def test_raw_bytes_on_the_wire_get_bbb_xml(lb, raw):
    import socket
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as conn:
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


def test_oversized_and_wrongly_typed_bodies(lb):
    url = lb.sign("create", "meetingID=big&name=Big")
    too_big = http(url, method="POST", data=b"<modules/>" + b" " * (65 * 1024 * 1024),
                   headers={"Content-Type": "application/xml"}, timeout=60)
    assert too_big.field("messageKey") == "requestTooLarge"
    wrong_type = http(lb.sign("isMeetingRunning", "meetingID=x"), method="POST", data=b"{}",
                      headers={"Content-Type": "application/json"})
    assert wrong_type.field("messageKey") == "unsupportedContentType"


def test_redirect_location_is_signed_for_the_backend(lb, sim):
    lb.call("create", {"meetingID": "signed", "name": "Signed", "moderatorPW": "mp"})
    join = lb.call("join", {"meetingID": "signed", "fullName": "Z", "password": "mp"}, algorithm="sha512")
    location = urlsplit(join.headers["Location"])
    server = next(s for s in sim.servers if location.port == urlsplit(s["url"]).port)
    digest = checksum.checksum_param(location.query)
    stripped = checksum.strip_checksum(location.query, digest)
    assert checksum.compute("join", stripped, server["secret"], "sha256") == digest
    assert lb.secret not in join.headers["Location"]
