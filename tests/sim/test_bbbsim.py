"""The BBB server simulator (scripts/bbbsim.py) behaves like bbb-web where the load balancer can tell."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from yarl import URL

from lb_core import bbbxml, checksum

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bbbsim  # noqa: E402

ALL = ("sha1", "sha256", "sha384", "sha512")


# -- helpers ---------------------------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def xml(self) -> Any:
        return bbbxml.parse(self.body)

    def field(self, path: str) -> str:
        return self.xml().findtext(path) or ""


async def fetch(http: aiohttp.ClientSession, url: str | URL, method: str = "GET", **kwargs: Any) -> Reply:
    """Send ``url`` byte for byte (yarl would re-encode a str query and break the checksum)."""
    target = url if isinstance(url, URL) else URL(url, encoded=True)
    kwargs.setdefault("allow_redirects", False)
    async with http.request(method, target, **kwargs) as response:
        return Reply(response.status, response.headers, await response.read())


async def api(
    http: aiohttp.ClientSession,
    server: bbbsim.SimServer,
    call: str,
    query: str | dict[str, str] | list[tuple[str, str]] = "",
    algorithm: str = "sha1",
    **kwargs: Any,
) -> Reply:
    raw = query if isinstance(query, str) else urlencode(query)
    return await fetch(http, server.api_url(call, raw, algorithm), **kwargs)


async def create(
    http: aiohttp.ClientSession, server: bbbsim.SimServer, meeting_id: str, **params: str
) -> Reply:
    reply = await api(http, server, "create", {"name": "Test Meeting", "meetingID": meeting_id, **params})
    return reply


async def control(
    http: aiohttp.ClientSession,
    cluster: bbbsim.SimCluster,
    path: str,
    body: Any = None,
    method: str | None = None,
) -> tuple[int, Any]:
    method = method or ("POST" if body is not None else "GET")
    async with http.request(method, f"{cluster.control_url}{path}", json=body) as response:
        payload = (
            await response.json(content_type=None)
            if "json" in response.content_type
            else await response.text()
        )
        return response.status, payload


async def eventually(predicate: Any, timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[bbbsim.SimCluster]:
    specs = [
        bbbsim.ServerSpec(
            "bbb1", "http://127.0.0.1:0/bigbluebutton/", "secret-1", recording_ready_delay=0.05
        ),
        bbbsim.ServerSpec(
            "bbb2",
            "http://127.0.0.1:0/bigbluebutton/",
            "secret-2",
            checksum_algorithms=("sha256",),
            config_xml=False,
        ),
        bbbsim.ServerSpec("bbb3", "http://127.0.0.1:0/bigbluebutton/", "testsecret"),
    ]
    sim = await bbbsim.start_cluster(specs, control_port=0)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
def bbb1(cluster: bbbsim.SimCluster) -> bbbsim.SimServer:
    return cluster["bbb1"]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny HTTP endpoint recording every callback it gets."""
    received: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        received.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.rel_url.raw_query_string,
                "content_type": request.content_type,
                "body": await request.text(),
            }
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


# -- version and checksums -------------------------------------------------------------------------


async def test_root_answers_version_without_checksum(http, bbb1) -> None:
    for url in (bbb1.url + "api", bbb1.url + "api/"):
        reply = await fetch(http, url)
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/xml;charset=utf-8"
        assert reply.field("returncode") == "SUCCESS"
        assert reply.field("version") == "2.0"
        assert reply.field("apiVersion") == "2.0"
        assert reply.xml().find("bbbVersion") is not None


@pytest.mark.parametrize("algorithm", ALL)
async def test_every_allowed_algorithm_is_accepted(http, bbb1, algorithm: str) -> None:
    reply = await api(http, bbb1, "getMeetings", "", algorithm)
    assert reply.field("returncode") == "SUCCESS"
    assert reply.field("messageKey") == "noMeetings"
    entry = bbb1.requests[-1]
    assert entry["call"] == "getMeetings"
    assert entry["checksum_ok"] is True
    assert entry["algorithm"] == algorithm


async def test_uppercase_hex_and_leading_ampersand_are_accepted(http, bbb1) -> None:
    digest = checksum.compute("getMeetings", "", bbb1.secret, "sha256").upper()
    reply = await fetch(http, f"{bbb1.url}api/getMeetings?&checksum={digest}")
    assert reply.field("returncode") == "SUCCESS"


async def test_missing_wrong_and_disallowed_checksums_are_refused(http, cluster) -> None:
    bbb1, bbb2 = cluster["bbb1"], cluster["bbb2"]
    missing = await fetch(http, f"{bbb1.url}api/isMeetingRunning?meetingID=abc")
    assert (missing.field("returncode"), missing.field("messageKey")) == ("FAILED", "checksumError")
    assert missing.field("message") == "You must provide the checksum"
    assert bbb1.requests[-1]["checksum_ok"] is False

    wrong = await fetch(http, f"{bbb1.url}api/isMeetingRunning?meetingID=abc&checksum={'0' * 40}")
    assert wrong.field("message") == "Checksums do not match"
    other_secret = await api(http, bbb2, "getMeetings", "", "sha256")
    assert other_secret.field("returncode") == "SUCCESS"
    signed_with_bbb1 = checksum.sign("getMeetings", "", "secret-1", "sha256")
    assert (await fetch(http, f"{bbb2.url}api/getMeetings?{signed_with_bbb1}")).field(
        "messageKey"
    ) == "checksumError"
    for algorithm in ("sha1", "sha384", "sha512"):  # bbb2 only allows sha256
        refused = await api(http, bbb2, "getMeetings", "", algorithm)
        assert refused.field("message") == "Checksums do not match", algorithm
        assert bbb2.requests[-1]["algorithm"] == algorithm
    bad_length = await fetch(http, f"{bbb1.url}api/getMeetings?checksum=abcdef")
    assert bad_length.field("messageKey") == "checksumError"


async def test_checksum_covers_the_raw_query_bytes(http, cluster) -> None:
    bbb3 = cluster["bbb3"]  # secret "testsecret", as in the contract's Ruby gem vector
    query = "attendeePW=ap&meetingID=rb-1&moderatorPW=mp&name=Room+%281%29+%26+co%21"
    reply = await fetch(
        http, f"{bbb3.url}api/create?{query}&checksum=867bc6aedfcbef5b706056547445d2497bd3fc65"
    )
    assert reply.field("returncode") == "SUCCESS"
    info = await api(http, bbb3, "getMeetingInfo", "meetingID=rb-1")
    assert info.field("meetingName") == "Room (1) & co!"
    # The same parameters encoded differently are different bytes: the checksum no longer fits.
    reencoded = query.replace("%28", "(").replace("%29", ")")
    digest = checksum.compute("create", query, "testsecret", "sha1")
    mismatch = await fetch(http, f"{bbb3.url}api/isMeetingRunning?{reencoded}&checksum={digest}")
    assert mismatch.field("message") == "Checksums do not match"


async def test_legacy_form_body_checksum_when_url_query_is_empty(http, bbb1) -> None:
    params = [("name", "Form Room ~*"), ("meetingID", "form-1"), ("attendeePW", "ap"), ("moderatorPW", "mp")]
    legacy = checksum.legacy_params_query(params)
    digest = checksum.compute("create", legacy, bbb1.secret, "sha1")
    body = urlencode([*params, ("checksum", digest)])
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await fetch(http, bbb1.url + "api/create", "POST", data=body, headers=headers)
    assert reply.field("returncode") == "SUCCESS", reply.text
    assert reply.field("meetingID") == "form-1"
    assert bbb1.requests[-1]["checksum_ok"] is True
    assert bbb1.requests[-1]["body_length"] == len(body)

    tampered = body.replace("form-1", "form-2")
    refused = await fetch(http, bbb1.url + "api/create", "POST", data=tampered, headers=headers)
    assert refused.field("message") == "Checksums do not match"
    unsigned = urlencode(params)
    missing = await fetch(http, bbb1.url + "api/create", "POST", data=unsigned, headers=headers)
    assert missing.field("message") == "You must provide the checksum"


# -- create ----------------------------------------------------------------------------------------


async def test_create_generates_fields_and_lowercases_metadata(http, bbb1) -> None:
    before = int(time.time() * 1000)
    reply = await create(http, bbb1, "room-1", meta_Presenter="Joe", **{"meta_bbb-Origin": "Greenlight"})
    root = reply.xml()
    assert root.findtext("returncode") == "SUCCESS"
    assert root.findtext("messageKey") == "" and root.findtext("message") == ""
    create_time = int(root.findtext("createTime"))
    assert create_time >= before
    assert root.findtext("internalMeetingID") == f"{hashlib.sha1(b'room-1').hexdigest()}-{create_time}"
    assert root.findtext("parentMeetingID") == "bbb-none"
    assert re.fullmatch(r"\d{5}", root.findtext("voiceBridge"))
    assert root.findtext("attendeePW") and root.findtext("moderatorPW")
    assert root.findtext("attendeePW") != root.findtext("moderatorPW")
    for tag in ("dialNumber", "createDate", "hasUserJoined", "duration", "hasBeenForciblyEnded"):
        assert root.find(tag) is not None, tag

    info = (await api(http, bbb1, "getMeetingInfo", "meetingID=room-1")).xml()
    assert info.findtext("metadata/presenter") == "Joe"
    assert info.findtext("metadata/bbb-origin") == "Greenlight"
    assert info.findtext("running") == "false"
    assert info.findtext("participantCount") == "0"
    assert info.findtext("internalMeetingID") == root.findtext("internalMeetingID")


async def test_create_duplicate_semantics(http, bbb1) -> None:
    first = (await create(http, bbb1, "dup", attendeePW="ap", moderatorPW="mp")).xml()
    same = (await create(http, bbb1, "dup", attendeePW="ap", moderatorPW="mp", name="Other")).xml()
    assert same.findtext("returncode") == "SUCCESS"
    assert same.findtext("messageKey") == "duplicateWarning"
    assert (
        same.findtext("message")
        == "This conference was already in existence and may currently be in progress."
    )
    for tag in ("internalMeetingID", "createTime", "voiceBridge", "attendeePW", "moderatorPW"):
        assert same.findtext(tag) == first.findtext(tag), tag
    without_passwords = (await create(http, bbb1, "dup")).xml()
    assert without_passwords.findtext("messageKey") == "duplicateWarning"
    for params in ({"attendeePW": "ap", "moderatorPW": "other"}, {"attendeePW": "ap"}):
        clash = await create(http, bbb1, "dup", **params)
        assert clash.field("returncode") == "FAILED"
        assert clash.field("messageKey") == "idNotUnique"
        assert (
            clash.field("message")
            == "A meeting already exists with that meeting ID.  Please use a different meeting ID."
        )


async def test_voice_bridge_must_be_unique_per_server(http, cluster) -> None:
    bbb1, bbb2 = cluster["bbb1"], cluster["bbb2"]
    assert (await create(http, bbb1, "vb-1", voiceBridge="71234")).field("voiceBridge") == "71234"
    clash = await create(http, bbb1, "vb-2", voiceBridge="71234")
    assert clash.field("returncode") == "FAILED"
    assert clash.field("messageKey") == "nonUniqueVoiceBridge"
    assert clash.field("message") == "The selected voice bridge is already in use."
    other_server = await api(
        http, bbb2, "create", {"name": "Elsewhere", "meetingID": "vb-2", "voiceBridge": "71234"}, "sha256"
    )
    assert other_server.field("returncode") == "SUCCESS"


@pytest.mark.parametrize(
    ("params", "key", "message"),
    [
        ({"name": "Room"}, "missingParamMeetingID", None),
        (
            {"name": "Room", "meetingID": "a"},
            "validationError",
            "Meeting ID must be between 2 and 256 characters",
        ),
        ({"name": "Room", "meetingID": "a,b"}, "validationError", "Meeting ID cannot contain ','"),
        (
            {"name": "Room", "meetingID": "x" * 257},
            "validationError",
            "Meeting ID must be between 2 and 256 characters",
        ),
        ({"meetingID": "room"}, "validationError", "You must provide a meeting name"),
        (
            {"name": "R", "meetingID": "room"},
            "validationError",
            "Meeting name must be between 2 and 256 characters",
        ),
        ({"name": "Room", "meetingID": "room", "attendeePW": "x"}, "validationError", None),
        ({"name": "Room", "meetingID": "room", "isBreakout": "true"}, "parentMeetingIdMissing", None),
    ],
)
async def test_create_validation(http, bbb1, params: dict[str, str], key: str, message: str | None) -> None:
    reply = await api(http, bbb1, "create", params)
    assert reply.field("returncode") == "FAILED"
    assert reply.field("messageKey") == key
    if message:
        assert reply.field("message") == message


async def test_create_with_xml_modules_body_counts_documents(http, bbb1, cluster) -> None:
    modules = (
        b"<?xml version='1.0' encoding='UTF-8'?><modules><module name='presentation'>"
        b"<document url='https://example.org/a.pdf' filename='a.pdf'/>"
        b"<document name='b.pdf'>SGVsbG8=</document></module></modules>"
    )
    query = urlencode({"name": "Slides", "meetingID": "slides"})
    reply = await fetch(
        http, bbb1.api_url("create", query), "POST", data=modules, headers={"Content-Type": "application/xml"}
    )
    assert reply.field("returncode") == "SUCCESS"
    status, meeting = await control(http, cluster, "/servers/bbb1/meetings/slides")
    assert status == 200 and meeting["documents"] == 2
    # A broken <modules> body is logged and ignored, as bbb-web does.
    broken = await fetch(
        http,
        bbb1.api_url("create", urlencode({"name": "Slides", "meetingID": "slides-2"})),
        "POST",
        data=b"<modules><module",
        headers={"Content-Type": "application/xml"},
    )
    assert broken.field("returncode") == "SUCCESS"


# -- join ------------------------------------------------------------------------------------------


async def test_join_redirects_to_the_client_which_knows_the_session(http, bbb1) -> None:
    await create(http, bbb1, "join-me", attendeePW="ap", moderatorPW="mp")
    reply = await api(http, bbb1, "join", {"fullName": "Alice <Ä>", "meetingID": "join-me", "password": "mp"})
    assert reply.status == 302
    location = reply.headers["Location"]
    assert re.fullmatch(re.escape(bbb1.origin) + r"/html5client/join\?sessionToken=[a-z0-9]{16}", location)
    page = await fetch(http, location)
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "join-me" in page.text and "Alice &lt;Ä&gt;" in page.text and "MODERATOR" in page.text
    assert (await fetch(http, bbb1.origin + "/html5client/join?sessionToken=nope")).status == 404

    info = (await api(http, bbb1, "getMeetingInfo", "meetingID=join-me")).xml()
    assert info.findtext("running") == "true"
    assert info.findtext("hasUserJoined") == "true"
    assert info.findtext("participantCount") == "1"
    assert info.findtext("moderatorCount") == "1"
    assert info.findtext("attendees/attendee/fullName") == "Alice <Ä>"
    assert info.findtext("attendees/attendee/role") == "MODERATOR"
    running = await api(http, bbb1, "isMeetingRunning", "meetingID=join-me")
    assert running.field("running") == "true"


async def test_join_with_redirect_false_answers_xml(http, bbb1) -> None:
    await create(http, bbb1, "xml-join", attendeePW="ap", moderatorPW="mp")
    reply = await api(
        http,
        bbb1,
        "join",
        {"fullName": "Bob", "meetingID": "xml-join", "password": "ap", "redirect": "false"},
    )
    root = reply.xml()
    assert root.findtext("returncode") == "SUCCESS"
    assert root.findtext("messageKey") == "successfullyJoined"
    assert root.findtext("meeting_id").startswith(hashlib.sha1(b"xml-join").hexdigest())
    assert re.fullmatch(r"w_[a-z0-9]{12}", root.findtext("user_id"))
    assert re.fullmatch(r"[a-z0-9]{12}", root.findtext("auth_token"))
    token = root.findtext("session_token")
    assert re.fullmatch(r"[a-z0-9]{16}", token)
    assert root.findtext("guestStatus") == "ALLOW"
    assert root.findtext("url") == f"{bbb1.origin}/html5client/join?sessionToken={token}"
    by_role = await api(
        http,
        bbb1,
        "join",
        {"fullName": "Eve", "meetingID": "xml-join", "role": "viewer", "redirect": "false"},
    )
    assert by_role.field("returncode") == "SUCCESS"
    info = (await api(http, bbb1, "getMeetingInfo", "meetingID=xml-join")).xml()
    assert [a.findtext("role") for a in info.iter("attendee")] == ["VIEWER", "VIEWER"]

    wrong = await api(http, bbb1, "join", {"fullName": "Bob", "meetingID": "xml-join", "password": "zz"})
    assert wrong.field("returncode") == "FAILED"
    unknown = await api(http, bbb1, "join", {"fullName": "Bob", "meetingID": "nowhere", "password": "ap"})
    assert (unknown.field("returncode"), unknown.field("messageKey")) == ("FAILED", "notFound")
    nameless = await api(http, bbb1, "join", {"meetingID": "xml-join", "password": "ap"})
    assert nameless.field("messageKey") == "missingParamFullName"
    posted = await fetch(http, bbb1.api_url("join", "fullName=Bob&meetingID=xml-join&password=ap"), "POST")
    assert posted.field("returncode") == "FAILED"


# -- end, callbacks, recordings --------------------------------------------------------------------


async def test_end_fires_callbacks_and_makes_a_recording(http, bbb1, receiver) -> None:
    base, received = receiver
    params = {
        "record": "true",
        "meta_endCallbackUrl": f"{base}/ended?room=1",
        "meta_bbb-recording-ready-url": f"{base}/ready",
        "meta_course": "Maths",
    }
    created = (await create(http, bbb1, "rec-1", **params)).xml()
    internal_id = created.findtext("internalMeetingID")
    await api(http, bbb1, "join", {"fullName": "Al", "meetingID": "rec-1", "role": "MODERATOR"})
    ended = await api(http, bbb1, "end", "meetingID=rec-1")
    assert ended.field("returncode") == "SUCCESS"
    assert ended.field("messageKey") == "sentEndMeetingRequest"
    assert ended.field("message").startswith("A request to end the meeting was sent.")

    await eventually(lambda: len(received) == 2)
    end_call = next(r for r in received if r["path"] == "/ended")
    assert end_call["method"] == "GET"
    assert parse_qs(end_call["query"]) == {"room": ["1"], "meetingID": ["rec-1"], "recordingmarks": ["true"]}
    ready = next(r for r in received if r["path"] == "/ready")
    assert ready["method"] == "POST"
    assert ready["content_type"] == "application/x-www-form-urlencoded"
    token = parse_qs(ready["body"])["signed_parameters"][0]
    assert jwt.decode(token, bbb1.secret, algorithms=["HS256"]) == {"meeting_id": "rec-1", "record_id": internal_id}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "secret-2", algorithms=["HS256"])
    assert {c["kind"] for c in bbb1.callbacks} == {"end", "recording_ready"}
    assert all(c.get("status") == 200 for c in bbb1.callbacks)

    meetings = await api(http, bbb1, "getMeetings")
    assert meetings.field("messageKey") == "noMeetings"
    assert meetings.field("message") == "no meetings were found on this server"
    assert (await api(http, bbb1, "isMeetingRunning", "meetingID=rec-1")).field("running") == "false"
    info = await api(http, bbb1, "getMeetingInfo", "meetingID=rec-1")
    assert info.field("messageKey") == "notFound"
    assert info.field("message") == "We could not find a meeting with that meeting ID"
    assert (await api(http, bbb1, "end", "meetingID=rec-1")).field("messageKey") == "notFound"
    rejoin = await api(http, bbb1, "join", {"fullName": "Al", "meetingID": "rec-1", "role": "MODERATOR"})
    assert rejoin.field("messageKey") == "meetingForciblyEnded"

    recording = (await api(http, bbb1, "getRecordings", "meetingID=rec-1")).xml().find("recordings/recording")
    assert recording.findtext("recordID") == internal_id
    assert recording.findtext("meetingID") == "rec-1"
    assert recording.findtext("state") == "published"
    assert recording.findtext("published") == "true"
    assert recording.findtext("metadata/course") == "Maths"
    assert recording.findtext("metadata/endcallbackurl") == f"{base}/ended?room=1"
    url = recording.findtext("playback/format/url")
    assert url == f"{bbb1.origin}/playback/presentation/2.3/{internal_id}"
    assert recording.findtext("playback/format/type") == "presentation"
    assert (await fetch(http, url)).status == 200
    # Created again after the end, the same meeting ID is a new meeting.
    again = await create(http, bbb1, "rec-1")
    assert again.field("returncode") == "SUCCESS" and again.field("messageKey") == ""


async def test_unreachable_callback_is_logged_not_raised(http, bbb1) -> None:
    port = free_port()
    await create(http, bbb1, "cb-down", **{"meta_endCallbackUrl": f"http://127.0.0.1:{port}/x"})
    assert (await api(http, bbb1, "end", "meetingID=cb-down")).field("returncode") == "SUCCESS"
    await eventually(lambda: bbb1.callbacks and "error" in bbb1.callbacks[-1])
    assert (await api(http, bbb1, "getMeetings")).field("returncode") == "SUCCESS"


async def _inject(http, cluster, server: str, **body: Any) -> str:
    status, answer = await control(http, cluster, f"/servers/{server}/recordings", body)
    assert status == 200, answer
    return answer["recordID"]


async def test_get_recordings_filters(http, cluster, bbb1) -> None:
    empty = await api(http, bbb1, "getRecordings")
    assert empty.xml().find("recordings") is not None and len(empty.xml().find("recordings")) == 0
    assert empty.field("messageKey") == "noRecordings"
    assert empty.field("message") == "There are no recordings for the meeting(s)."

    a = await _inject(
        http, cluster, "bbb1", meetingID="m-a", recordID="rec-a", meta={"Course": "maths", "term": "1"}
    )
    b = await _inject(http, cluster, "bbb1", meetingID="m-b", recordID="rec-b", meta={"course": "physics"})
    c = await _inject(
        http,
        cluster,
        "bbb1",
        meetingID="m-a",
        recordID="rec-c",
        state="unpublished",
        meta={"course": "maths"},
    )
    d = await _inject(http, cluster, "bbb1", meetingID="m-d", recordID="rec-d", state="processing")

    async def ids(query: str) -> list[str]:
        root = (await api(http, bbb1, "getRecordings", query)).xml()
        return [r.findtext("recordID") for r in root.iter("recording")]

    assert await ids("") == [a, b, c]  # default states: published and unpublished
    assert await ids("meetingID=m-a") == [a, c]
    assert await ids("meetingID=m-a%2Cm-b") == [a, b, c]
    assert await ids("recordID=rec-b,rec-c") == [b, c]
    assert await ids("recordID=rec-b&meetingID=m-a") == [b]  # recordID wins, as in bbb-web
    assert await ids("state=unpublished") == [c]
    assert await ids("state=processing,published") == [a, b, d]
    assert await ids("state=any") == [a, b, c, d]
    assert await ids("meta_course=maths") == [a, c]
    assert await ids("meta_course=maths&meta_term=1") == [a]
    assert await ids("meta_course=chemistry") == []
    assert await ids("offset=1&limit=1") == [b]
    paged = (await api(http, bbb1, "getRecordings", "limit=2")).xml()
    assert paged.findtext("totalElements") == "3"
    recording = (await api(http, bbb1, "getRecordings", "recordID=rec-a")).xml().find("recordings/recording")
    for tag in (
        "internalMeetingID",
        "name",
        "isBreakout",
        "startTime",
        "endTime",
        "participants",
        "playback",
    ):
        assert recording.find(tag) is not None, tag


async def test_publish_delete_and_update_recordings(http, cluster, bbb1) -> None:
    await _inject(http, cluster, "bbb1", meetingID="m", recordID="r1", meta={"keep": "yes", "drop": "me"})
    await _inject(http, cluster, "bbb1", meetingID="m", recordID="r2")

    unpublished = await api(http, bbb1, "publishRecordings", "recordID=r1,r2&publish=false")
    assert unpublished.field("returncode") == "SUCCESS" and unpublished.field("published") == "false"
    states = (await api(http, bbb1, "getRecordings", "meetingID=m")).xml()
    assert {r.findtext("state") for r in states.iter("recording")} == {"unpublished"}
    assert {r.findtext("published") for r in states.iter("recording")} == {"false"}
    assert (await api(http, bbb1, "publishRecordings", "recordID=r1&publish=true")).field(
        "published"
    ) == "true"

    updated = await api(http, bbb1, "updateRecordings", "recordID=r1&meta_Drop=&meta_new=value")
    assert updated.field("updated") == "true"
    metadata = (
        (await api(http, bbb1, "getRecordings", "recordID=r1")).xml().find("recordings/recording/metadata")
    )
    assert metadata.findtext("keep") == "yes" and metadata.findtext("new") == "value"
    assert metadata.find("drop") is None

    deleted = await api(http, bbb1, "deleteRecordings", "recordID=r2")
    assert deleted.field("deleted") == "true"
    remaining = (await api(http, bbb1, "getRecordings", "meetingID=m")).xml()
    assert [r.findtext("recordID") for r in remaining.iter("recording")] == ["r1"]
    assert [
        s["recordings"] for s in (await control(http, cluster, "/servers"))[1] if s["name"] == "bbb1"
    ] == [["r1"]]

    for call, query in (
        ("publishRecordings", "recordID=r1,nope&publish=true"),
        ("deleteRecordings", "recordID=r2"),
        ("updateRecordings", "recordID=nope&meta_a=b"),
    ):
        missing = await api(http, bbb1, call, query)
        assert (missing.field("returncode"), missing.field("messageKey")) == ("FAILED", "notFound"), call
        assert missing.field("message") == "We could not find recordings"
    assert (await api(http, bbb1, "publishRecordings", "recordID=r1")).field("returncode") == "FAILED"


async def test_text_tracks_documents_chat_and_sessions(http, cluster, bbb1) -> None:
    await _inject(http, cluster, "bbb1", meetingID="m", recordID="r1")
    tracks = await api(http, bbb1, "getRecordingTextTracks", "recordID=r1")
    assert tracks.headers["Content-Type"].startswith("application/json")
    assert json.loads(tracks.body) == {"response": {"returncode": "SUCCESS", "tracks": []}}

    form = aiohttp.FormData()
    form.add_field(
        "file", b"WEBVTT\n\n00:00.000 --> 00:01.000\nHi\n", filename="c.vtt", content_type="text/vtt"
    )
    put = await fetch(
        http,
        bbb1.api_url("putRecordingTextTrack", "recordID=r1&kind=subtitles&lang=pt-BR&label=Portugu%C3%AAs"),
        "POST",
        data=form,
    )
    answer = json.loads(put.body)["response"]
    assert answer["returncode"] == "SUCCESS" and answer["messageKey"] == "upload_text_track_success"
    listed = json.loads((await api(http, bbb1, "getRecordingTextTracks", "recordID=r1")).body)
    assert listed["response"]["tracks"][0]["lang"] == "pt-BR"
    assert listed["response"]["tracks"][0]["label"] == "Português"
    bad_kind = await fetch(
        http,
        bbb1.api_url("putRecordingTextTrack", "recordID=r1&kind=odd&lang=en"),
        "POST",
        data=aiohttp.FormData({"a": "b"}, default_to_multipart=True),
    )
    assert json.loads(bad_kind.body)["response"]["messageKey"] == "invalidKind"
    unknown = await api(http, bbb1, "getRecordingTextTracks", "recordID=nope")
    assert json.loads(unknown.body)["response"]["returncode"] == "FAILED"

    await create(http, bbb1, "docs")
    xml_headers = {"Content-Type": "application/xml"}
    document = (
        b"<modules><module name='presentation'><document url='https://example.org/x.pdf'/></module></modules>"
    )
    inserted = await fetch(
        http, bbb1.api_url("insertDocument", "meetingID=docs"), "POST", data=document, headers=xml_headers
    )
    assert inserted.field("returncode") == "SUCCESS"
    assert inserted.field("message") == "Presentation is being uploaded"
    missing = await fetch(
        http, bbb1.api_url("insertDocument", "meetingID=nope"), "POST", data=document, headers=xml_headers
    )
    assert missing.field("messageKey") == "notFound"
    broken = await fetch(
        http, bbb1.api_url("insertDocument", "meetingID=docs"), "POST", data=b"<modules", headers=xml_headers
    )
    assert broken.field("returncode") == "FAILED"
    as_form = await fetch(
        http,
        bbb1.api_url("insertDocument", "meetingID=docs"),
        "POST",
        data=b"a=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert as_form.field("messageKey") == "unsupportedContentType"

    chat = await api(
        http, bbb1, "sendChatMessage", {"meetingID": "docs", "message": "Hello!", "userName": "Bot"}
    )
    assert chat.field("returncode") == "SUCCESS"
    assert (await api(http, bbb1, "sendChatMessage", {"meetingID": "nope", "message": "x"})).field(
        "messageKey"
    ) == "notFound"
    status, meeting = await control(http, cluster, "/servers/bbb1/meetings/docs")
    assert meeting["documents"] == 1 and meeting["chat"] == [{"userName": "Bot", "message": "Hello!"}]

    sessions = await api(http, bbb1, "getSessions")
    assert sessions.field("returncode") == "SUCCESS" and sessions.xml().find("sessions") is not None


# -- config.xml (Flash era) ------------------------------------------------------------------------


async def test_config_xml_get_and_set(http, cluster, bbb1) -> None:
    default = await api(http, bbb1, "getDefaultConfigXML")
    assert default.headers["Content-Type"] == "text/xml;charset=utf-8"
    root = default.xml()
    assert root.tag == "config"
    host = urlsplit(bbb1.origin).netloc
    assert root.find("help").get("url") == f"{bbb1.origin}/help.html"
    assert root.find("porttest").get("host") == host
    assert root.find("application").get("uri") == f"rtmp://{host}/bigbluebutton"
    assert root.find("skinning").get("url") == f"{bbb1.origin}/client/branding/css/BBBDefault.css.swf"
    signed = checksum.sign("getDefaultConfigXML", "", bbb1.secret, "sha1")  # ".xml": a Grails format suffix
    assert (await fetch(http, f"{bbb1.url}api/getDefaultConfigXML.xml?{signed}")).xml().tag == "config"

    await create(http, bbb1, "flash")
    custom = default.text.replace('showToolbar="true"', 'showToolbar="false"')
    params = [("meetingID", "flash"), ("configXML", custom)]
    digest = checksum.compute("setConfigXML", checksum.legacy_params_query(params), bbb1.secret, "sha1")
    body = urlencode([*params, ("checksum", digest)])
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    stored = await fetch(http, bbb1.url + "api/setConfigXML.xml", "POST", data=body, headers=headers)
    assert stored.field("returncode") == "SUCCESS", stored.text
    assert re.fullmatch(r"[a-z0-9]+", stored.field("token"))
    status, text = await control(http, cluster, "/servers/bbb1/config_xml/flash")
    assert status == 200 and text == custom
    assert (await control(http, cluster, "/servers/bbb1/config_xml/other"))[0] == 404

    # Signed over the URL query instead, with the XML in the body: also what bbb-web accepts.
    query = "meetingID=flash"
    url_signed = await fetch(
        http,
        bbb1.api_url("setConfigXML", query),
        "POST",
        data=urlencode({"configXML": "<config/>"}),
        headers=headers,
    )
    assert url_signed.field("returncode") == "SUCCESS"
    not_xml = await fetch(
        http,
        bbb1.api_url("setConfigXML", query),
        "POST",
        data=urlencode({"configXML": "<config"}),
        headers=headers,
    )
    assert not_xml.field("returncode") == "FAILED"

    bbb2 = cluster["bbb2"]  # a 2.4+ server: both calls are gone
    gone = await api(http, bbb2, "getDefaultConfigXML", "", "sha256")
    assert (gone.field("returncode"), gone.field("messageKey")) == ("FAILED", "unsupportedRequest")
    assert (await api(http, bbb2, "setConfigXML", "meetingID=flash", "sha256")).field(
        "returncode"
    ) == "FAILED"


# -- faults ----------------------------------------------------------------------------------------


async def test_faults_refuse_503_hang_slow_and_recover(http, cluster, bbb1) -> None:
    root = bbb1.url + "api"

    async def set_fault(mode: str, delay_ms: int = 0) -> None:
        status, summary = await control(
            http, cluster, "/servers/bbb1/fault", {"mode": mode, "delay_ms": delay_ms}
        )
        assert status == 200 and summary["fault"] == mode

    await set_fault("refuse")
    with pytest.raises(aiohttp.ClientConnectorError):
        await fetch(http, root)
    await set_fault("ok")
    assert (await fetch(http, root)).status == 200  # the same port again

    await set_fault("503")
    unavailable = await api(http, bbb1, "getMeetings")
    assert unavailable.status == 503 and unavailable.headers["Content-Type"].startswith("text/html")
    assert bbb1.requests[-1]["fault"] == "503"

    await set_fault("hang")
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await fetch(http, root, timeout=aiohttp.ClientTimeout(total=0.3))
    assert time.monotonic() - started < 2
    await eventually(lambda: bbb1.hanging == 0)  # the client gave up: no handler left behind

    await set_fault("slow", 250)
    started = time.monotonic()
    assert (await api(http, bbb1, "getMeetings")).field("returncode") == "SUCCESS"
    assert time.monotonic() - started >= 0.25
    await set_fault("ok")
    assert (await api(http, bbb1, "getMeetings")).field("returncode") == "SUCCESS"
    assert (await control(http, cluster, "/servers/bbb1/fault", {"mode": "weird"}))[0] == 400


async def test_hang_is_released_when_the_fault_is_lifted(http, bbb1) -> None:
    await bbb1.set_fault("hang")
    pending = asyncio.ensure_future(fetch(http, bbb1.url + "api"))
    await eventually(lambda: bbb1.hanging == 1)
    await bbb1.set_fault("ok")
    assert (await asyncio.wait_for(pending, 2)).status == 200


# -- control API -----------------------------------------------------------------------------------


async def test_control_api(http, cluster, bbb1) -> None:
    status, servers = await control(http, cluster, "/servers")
    assert status == 200
    assert [s["name"] for s in servers] == ["bbb1", "bbb2", "bbb3"]
    assert servers[0]["url"] == bbb1.url and servers[0]["fault"] == "ok"
    assert servers[0]["meetings"] == [] and servers[0]["recordings"] == []

    await create(http, bbb1, "busy")
    counts = {"participants": 7, "voice": 3, "video": 2, "moderators": 1, "listeners": 1}
    status, _ = await control(http, cluster, "/servers/bbb1/meetings/busy/participants", counts)
    assert status == 200
    meeting = (await api(http, bbb1, "getMeetings")).xml().find("meetings/meeting")
    assert meeting.findtext("participantCount") == "7"
    assert meeting.findtext("voiceParticipantCount") == "3"
    assert meeting.findtext("videoCount") == "2"
    assert meeting.findtext("moderatorCount") == "1"
    assert meeting.findtext("listenerCount") == "1"
    assert meeting.findtext("running") == "true"
    assert len(meeting.findall("attendees/attendee")) == 7
    assert (await control(http, cluster, "/servers/bbb1/meetings/none/participants", counts))[0] == 404
    assert (await control(http, cluster, "/servers/nobody/requests"))[0] == 404

    status, servers = await control(http, cluster, "/servers")
    assert servers[0]["meetings"] == ["busy"]
    status, log = await control(http, cluster, "/servers/bbb1/requests")
    assert [entry["call"] for entry in log] == ["create", "getMeetings"]
    assert set(log[0]) >= {
        "call",
        "method",
        "raw_query",
        "checksum_ok",
        "algorithm",
        "content_type",
        "body_length",
        "ts",
    }
    assert log[0]["raw_query"].startswith("name=Test+Meeting&meetingID=busy&checksum=")
    assert (await control(http, cluster, "/servers/bbb1/requests", method="DELETE"))[0] == 200
    assert (await control(http, cluster, "/servers/bbb1/requests"))[1] == []

    status, _ = await control(http, cluster, "/servers/bbb1/meetings/busy/end", {})
    assert status == 200
    assert (await api(http, bbb1, "isMeetingRunning", "meetingID=busy")).field("running") == "false"
    assert (await control(http, cluster, "/servers/bbb1/meetings/busy/end", {}))[0] == 404

    await create(http, bbb1, "left-over")
    await bbb1.set_fault("slow", 10)
    assert (await control(http, cluster, "/reset", {}))[0] == 200
    status, servers = await control(http, cluster, "/servers")
    assert servers[0]["meetings"] == [] and servers[0]["fault"] == "ok"
    assert list(bbb1.requests) == []


# -- robustness ------------------------------------------------------------------------------------


async def test_bad_input_always_gets_an_xml_answer(http, bbb1) -> None:
    huge = "x" * 200_000
    for query in (
        f"name=Room&meetingID=big&welcome={huge}",
        "name=%zz%C3%28&meetingID=weird%ff%00",
        "name=Room&meetingID=%C3%28%E2%82",
        "&&&=&=x&meetingID",
    ):
        reply = await api(http, bbb1, "create", query)
        assert reply.status == 200, query[:40]
        assert reply.headers["Content-Type"] == "text/xml;charset=utf-8"
        assert reply.field("returncode") in ("SUCCESS", "FAILED")
    no_type = await fetch(http, bbb1.api_url("create", "name=Room&meetingID=ct"), "POST", data=b"\x00\x01")
    assert no_type.field("messageKey") == "unsupportedContentType"
    unknown = await api(http, bbb1, "hooks/create", "callbackURL=x")
    assert (unknown.field("returncode"), unknown.field("messageKey")) == ("FAILED", "unsupportedRequest")
    assert (await fetch(http, bbb1.origin + "/elsewhere")).status == 404


async def test_many_servers_start_and_stop_quickly() -> None:
    started = time.monotonic()
    sim = await bbbsim.start_cluster(bbbsim.specs_for(60, base_port=0), control_port=None)
    try:
        assert len(sim) == 60 and sim.control_url is None
        assert len({server.port for server in sim}) == 60
        async with aiohttp.ClientSession() as http:
            replies = await asyncio.gather(*(api(http, s, "getMeetings") for s in sim))
        assert {r.field("returncode") for r in replies} == {"SUCCESS"}
    finally:
        await sim.stop()
    assert time.monotonic() - started < 5


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        bbbsim.ServerSpec("x", "https://127.0.0.1:1/bigbluebutton/", "s")
    with pytest.raises(ValueError):
        bbbsim.ServerSpec("x", "http://127.0.0.1:1/bigbluebutton/", "s", checksum_algorithms=("md5",))
    spec = bbbsim.ServerSpec.from_dict(
        {
            "name": "a",
            "url": "http://127.0.0.1:1/bigbluebutton",
            "secret": "s",
            "checksum_algorithms": ["sha512"],
        }
    )
    assert spec.url.endswith("/") and spec.checksum_algorithms == ("sha512",) and spec.config_xml is True
    with pytest.raises(ValueError):
        bbbsim.ServerSpec.from_dict({"name": "a"})


# -- command line ----------------------------------------------------------------------------------


async def test_command_line_runs_and_stops_on_sigterm(http) -> None:
    """Port 0 everywhere: the servers and the control API bind free ports, and the control API tells which."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "bbbsim.py"),
            "--servers",
            "2",
            "--base-port",
            "0",
            "--control-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 10)
        ready = re.fullmatch(r"bbbsim ready (http://127\.0\.0\.1:(\d+))", line.strip())
        assert ready and int(ready.group(2)) > 0, line
        async with http.get(f"{ready.group(1)}/servers") as response:
            servers = await response.json()
        urls = [urlsplit(s["url"]) for s in servers]
        assert [s["name"] for s in servers] == ["bbb1", "bbb2"]
        assert all(u.hostname == "127.0.0.1" and u.port and u.path == "/bigbluebutton/" for u in urls)
        assert len({u.port for u in urls}) == 2
        signed = checksum.sign("getMeetings", "", "secret-2", "sha256")
        reply = await fetch(http, f"{servers[1]['url']}api/getMeetings?{signed}")
        assert reply.field("returncode") == "SUCCESS"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, errors = await asyncio.to_thread(process.communicate, timeout=5)
        assert process.returncode == 0, errors
        assert time.monotonic() - started < 3
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
