"""The gateway's behaviour, in process: checksums, routing, the byte-exact query, errors from backends."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

import pytest

from lb_core import checksum


async def test_join_with_redirect_false_is_proxied(lb, sim):
    await lb.call("create", {"meetingID": "xmljoin", "name": "Xml join", "moderatorPW": "mp", "attendeePW": "ap"})
    reply = await lb.call("join", {"meetingID": "xmljoin", "fullName": "Bob", "password": "ap", "redirect": "false"})
    assert reply.status == 200
    assert reply.field("messageKey") == "successfullyJoined"
    assert reply.headers["Content-Type"] == "text/xml;charset=utf-8"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
async def test_every_checksum_algorithm_is_accepted(lb, algorithm):
    reply = await lb.call("isMeetingRunning", {"meetingID": "nope"}, algorithm=algorithm)
    assert reply.field("returncode") == "SUCCESS" and reply.field("running") == "false"
    upper = lb.sign("isMeetingRunning", "meetingID=nope", algorithm=algorithm)
    head, digest = upper.rsplit("=", 1)
    assert (await lb.http(f"{head}={digest.upper()}")).xml().findtext("returncode") == "SUCCESS"


async def test_wrong_and_missing_checksums_are_refused(lb, sim):
    wrong = await lb.call("create", {"meetingID": "evil", "name": "Evil"}, secret="not-the-secret")
    assert (wrong.field("returncode"), wrong.field("messageKey")) == ("FAILED", "checksumError")
    assert wrong.field("message") == "Checksums do not match"
    missing = await lb.http(lb.api + "create?meetingID=evil&name=Evil")
    assert missing.field("messageKey") == "checksumError"
    assert missing.field("message") == "You must provide the checksum"
    bad_length = await lb.http(lb.api + "create?meetingID=evil&checksum=abc123")
    assert bad_length.field("messageKey") == "checksumError"
    assert all("evil" not in sim.meetings(s["name"]) for s in sim.servers)


@pytest.mark.parametrize("query", [
    "name=Room+%281%29+%26+co%21&meetingID=enc-1&moderatorPW=mp&attendeePW=ap",
    "meetingID=enc-2&name=Room%20two!&attendeePW=ap&moderatorPW=mp",
    "&meetingID=enc-3&name=it's*(fine)&moderatorPW=mp",
    "attendeePW=ap&moderatorPW=mp&name=Caf%C3%A9&meetingID=enc-4&welcome=",
])
async def test_the_signed_query_reaches_the_backend_byte_for_byte(lb, sim, query):
    reply = await lb.http(lb.sign("create", query, algorithm="sha1"))
    assert reply.field("returncode") == "SUCCESS", reply.text
    meeting_id = dict(parse_qsl(query))["meetingID"]
    server = sim.server_of(meeting_id)
    forwarded = [r for r in sim.requests(server) if r["call"] == "create"][-1]
    assert forwarded["checksum_ok"]
    received = forwarded["raw_query"]
    assert received.startswith(query), (query, received)
    # Only the LB's own metadata follows the client's bytes, then the backend's checksum.
    tail = received[len(query):]
    assert "meta_mconflb-institution=default" in tail and "checksum=" in tail


async def test_concurrent_creates_of_one_meeting_end_on_one_server(lb, sim):
    async def create() -> str:
        return (await lb.call("create", {"meetingID": "race", "name": "Race", "attendeePW": "ap",
                                         "moderatorPW": "mp"})).field("returncode")

    results = await asyncio.gather(*(create() for _ in range(16)))
    assert results.count("SUCCESS") == 16
    holders = [s["name"] for s in sim.servers if "race" in sim.meetings(s["name"])]
    assert len(holders) == 1


async def test_unknown_meetings_get_bbb_answers_locally(lb):
    assert (await lb.call("isMeetingRunning", {"meetingID": "ghost"})).field("running") == "false"
    for call in ("getMeetingInfo", "end"):
        reply = await lb.call(call, {"meetingID": "ghost", "password": "mp"})
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "notFound")
    join = await lb.call("join", {"meetingID": "ghost", "fullName": "A", "password": "x"})
    assert join.status == 200 and join.field("messageKey") == "notFound"
    missing = await lb.call("getMeetingInfo", {})
    assert missing.field("messageKey") == "missingParamMeetingID"


async def test_end_forgets_the_meeting(lb, sim):
    await lb.call("create", {"meetingID": "ending", "name": "Ending", "moderatorPW": "mp"})
    server = sim.server_of("ending")
    ended = await lb.call("end", {"meetingID": "ending", "password": "mp"})
    assert ended.field("messageKey") == "sentEndMeetingRequest"
    assert "ending" not in sim.meetings(server)
    assert (await lb.call("getMeetingInfo", {"meetingID": "ending"})).field("messageKey") == "notFound"


async def test_a_refusing_server_is_skipped_for_new_meetings(lb_factory, sim):
    lb = await lb_factory(servers=[0, 1], monitor={"interval_s": 60, "timeout_s": 1})
    await sim.fault("bbb1", "refuse")
    for i in range(4):
        reply = await lb.call("create", {"meetingID": f"fo-{i}", "name": "Failover"})
        assert reply.field("returncode") == "SUCCESS", reply.text
        assert sim.server_of(f"fo-{i}") == "bbb2"


async def test_a_hanging_server_gets_a_bounded_bbb_error(lb_factory, sim):
    lb = await lb_factory(servers=[0], backend={"timeout_s": 1.0, "connect_timeout_s": 1.0},
                          monitor={"interval_s": 60, "timeout_s": 0.5})
    await lb.call("create", {"meetingID": "slowpoke", "name": "Slow"})
    await sim.fault("bbb1", "hang")
    reply = await lb.call("getMeetingInfo", {"meetingID": "slowpoke"})
    assert reply.field("returncode") == "FAILED"
    assert reply.field("messageKey") == "serverTimeout"
    broken = await lb.call("isMeetingRunning", {"meetingID": "slowpoke"})
    assert broken.field("returncode") == "FAILED"


async def test_a_503_page_becomes_bbb_xml(lb_factory, sim):
    lb = await lb_factory(servers=[0], monitor={"interval_s": 60, "timeout_s": 1})
    await lb.call("create", {"meetingID": "err503", "name": "Err 503"})
    await sim.fault("bbb1", "503")
    reply = await lb.call("getMeetingInfo", {"meetingID": "err503"})
    assert reply.headers["Content-Type"] == "text/xml;charset=utf-8"
    assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "internalError")


async def test_root_and_unknown_calls(lb):
    for path in ("bigbluebutton/api", "bigbluebutton/api/"):
        reply = await lb.http(f"{lb.url}/{path}")
        assert reply.status == 200 and reply.field("version") == "2.0"
        assert reply.field("custom/name") == "bbb-lb"
    unknown = await lb.call("fooBar", {"meetingID": "x"})
    assert unknown.field("messageKey") == "unsupportedRequest"
    elsewhere = await lb.http(lb.url + "/favicon.ico")
    assert elsewhere.status == 404 and elsewhere.headers["Content-Type"] == "text/xml;charset=utf-8"


async def test_form_post_bodies_are_accepted_as_bbb_does(lb, sim):
    body = "meetingID=formpost&name=Form+Post&moderatorPW=mp"
    legacy = checksum.legacy_params_query(parse_qsl(body))
    digest = checksum.compute("create", legacy, lb.secret, "sha1")
    reply = await lb.http(lb.api + "create", method="POST", data=f"{body}&checksum={digest}".encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    sim.server_of("formpost")


async def test_create_with_preupload_xml_passes_the_body_through(lb, sim):
    slides = b'<?xml version="1.0"?><modules><module name="presentation"><document url="http://x/a.pdf"/>' \
             b"</module></modules>"
    url = lb.sign("create", "meetingID=slides&name=Slides")
    reply = await lb.http(url, method="POST", data=slides, headers={"Content-Type": "application/xml"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    server = sim.server_of("slides")
    forwarded = [r for r in sim.requests(server) if r["call"] == "create"][-1]
    assert forwarded["body_length"] == len(slides) and forwarded["content_type"].startswith("application/xml")


async def test_a_wrongly_typed_body_is_refused(lb):
    wrong_type = await lb.http(lb.sign("isMeetingRunning", "meetingID=x"), method="POST", data=b"{}",
                               headers={"Content-Type": "application/json"})
    assert wrong_type.field("messageKey") == "unsupportedContentType"


async def test_redirect_location_is_signed_for_the_backend(lb, sim):
    await lb.call("create", {"meetingID": "signed", "name": "Signed", "moderatorPW": "mp"})
    join = await lb.call("join", {"meetingID": "signed", "fullName": "Z", "password": "mp"}, algorithm="sha512")
    location = urlsplit(join.headers["Location"])
    server = next(s for s in sim.servers if location.port == urlsplit(s["url"]).port)
    digest = checksum.checksum_param(location.query)
    stripped = checksum.strip_checksum(location.query, digest)
    assert checksum.compute("join", stripped, server["secret"], "sha256") == digest
    assert lb.secret not in join.headers["Location"]


async def test_join_redirects_to_a_server_that_accepts_the_join(lb, sim):
    await lb.call("create", {"meetingID": "join-me", "name": "Join me", "attendeePW": "ap", "moderatorPW": "mp"})
    server = next(s for s in sim.servers if s["name"] == sim.server_of("join-me"))
    reply = await lb.call("join", {"meetingID": "join-me", "fullName": "Alice Ä", "password": "mp"})
    assert reply.status == 302 and reply.headers["Location"].startswith(server["url"] + "api/join?")
    page = await lb.http(reply.headers["Location"])
    assert page.status == 302  # the simulated server accepts the re-signed join and sends the browser on
    client = await lb.http(page.headers["Location"])
    assert client.status == 200 and "Alice" in client.text and "join-me" in client.text
    assert (await lb.call("isMeetingRunning", {"meetingID": "join-me"})).field("running") == "true"
