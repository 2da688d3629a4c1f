"""The whole API surface in process: merged calls and the Mconf-LB extras."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

import pytest

from lb_core import checksum
from tests.core.conftest import start_sim

GEOLOC = ["address", "ip", "countryCode", "countryCode3", "countryName", "city", "latitude", "longitude",
          "continentCode"]


async def create(lb, meeting_id: str, **params: str):  # type: ignore[no-untyped-def]
    reply = await lb.call("create", {"meetingID": meeting_id, "name": f"Meeting {meeting_id}", "moderatorPW": "mp",
                                     "attendeePW": "ap", **params})
    assert reply.field("returncode") == "SUCCESS", reply.text
    return reply


# --- getMeetings -----------------------------------------------------------------------------------------


async def test_get_meetings_merges_every_server_with_the_server_block(lb, sim):
    for i in range(5):
        await create(lb, f"gm-{i}", preferredServer=f"bbb{i + 1}")
    root = (await lb.call("getMeetings")).xml()
    assert sorted(m.findtext("meetingID") for m in root.iterfind("meetings/meeting")) == [f"gm-{i}" for i in range(5)]
    for meeting in root.iterfind("meetings/meeting"):
        expected = next(s for s in sim.servers if s["name"] == sim.server_of(meeting.findtext("meetingID")))
        assert meeting.findtext("server/name") == expected["name"]
        assert meeting.findtext("server/address") == "127.0.0.1"
        assert expected["url"].startswith(meeting.findtext("server/url"))
    assert "secret" not in (await lb.call("getMeetings")).text


@pytest.mark.parametrize("fault", ["refuse", "hang", "503"])
async def test_get_meetings_leaves_out_a_broken_server(lb_factory, sim, fault):
    lb = await lb_factory(monitor={"interval_s": 60, "timeout_s": 1.0})
    for i in range(3):
        await create(lb, f"down-{i}", preferredServer=f"bbb{i + 1}")
    await sim.fault("bbb2", fault)
    reply = await lb.call("getMeetings")
    assert reply.field("returncode") == "SUCCESS"
    ids = sorted(m.findtext("meetingID") for m in reply.xml().iterfind("meetings/meeting"))
    assert ids == ["down-0", "down-2"]


async def test_get_meetings_without_meetings(lb):
    reply = await lb.call("getMeetings")
    assert reply.field("returncode") == "SUCCESS" and reply.field("messageKey") == "noMeetings"
    assert reply.xml().find("meetings") is not None


# --- getRecordings and recording actions --------------------------------------------------------------


@pytest.fixture
async def recordings(lb, sim):  # type: ignore[no-untyped-def]
    sim.add_recording("bbb1", "m-a", "rec-1", meta={"presenter": "joe", "category": "education"})
    sim.add_recording("bbb2", "m-a", "rec-2", meta={"presenter": "joe", "category": "sports"})
    sim.add_recording("bbb3", "m-b", "rec-3", meta={"presenter": "ann"}, state="unpublished", published=False)
    sim.add_recording("bbb4", "m-c", "rec-4", meta={"presenter": "joe", "category": "education"})
    await lb.lb.recording_sync.sync_all()  # getRecordings answers from the index the sync fills
    return lb


def record_ids(reply) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(r.findtext("recordID") for r in reply.xml().iterfind("recordings/recording"))


async def test_get_recordings_merges_and_filters(recordings, sim):
    lb = recordings
    assert record_ids(await lb.call("getRecordings")) == ["rec-1", "rec-2", "rec-3", "rec-4"]
    assert record_ids(await lb.call("getRecordings", {"meetingID": "m-a,m-c"})) == ["rec-1", "rec-2", "rec-4"]
    assert record_ids(await lb.call("getRecordings", {"recordID": "rec-3,rec-4"})) == ["rec-3", "rec-4"]
    assert record_ids(await lb.call("getRecordings", {"state": "unpublished"})) == ["rec-3"]
    both = await lb.call("getRecordings", {"meta_presenter": "joe", "meta_category": "education"})
    assert record_ids(both) == ["rec-1", "rec-4"]
    combined = await lb.call("getRecordings", {"meetingID": "m-a", "meta_category": "education"})
    assert record_ids(combined) == ["rec-1"]
    page = await lb.call("getRecordings", {"offset": "1", "limit": "2"})
    assert len(record_ids(page)) == 2
    none = await lb.call("getRecordings", {"meetingID": "nothing-here"})
    assert none.field("messageKey") == "noRecordings" and none.field("returncode") == "SUCCESS"
    bad = await lb.call("getRecordings", {"limit": "-1"})
    assert bad.field("messageKey") == "invalidParameters"


async def test_get_recordings_survives_a_down_server(recordings, sim):
    await sim.fault("bbb2", "refuse")
    # The index keeps what the down server's recordings were: still listed.
    assert record_ids(await recordings.call("getRecordings")) == ["rec-1", "rec-2", "rec-3", "rec-4"]


async def test_recording_actions_go_to_each_holder(recordings, sim):
    lb = recordings
    published = await lb.call("publishRecordings", {"recordID": "rec-1,rec-3", "publish": "true"})
    assert published.field("returncode") == "SUCCESS" and published.field("published") == "true"
    assert record_ids(await lb.call("getRecordings", {"state": "published"})) == ["rec-1", "rec-2", "rec-3", "rec-4"]
    updated = await lb.call("updateRecordings", {"recordID": "rec-2,rec-4", "meta_category": "archive"})
    assert updated.field("updated") == "true"
    assert record_ids(await lb.call("getRecordings", {"meta_category": "archive"})) == ["rec-2", "rec-4"]
    deleted = await lb.call("deleteRecordings", {"recordID": "rec-1,rec-2,rec-4"})
    assert deleted.field("deleted") == "true"
    assert record_ids(await lb.call("getRecordings")) == ["rec-3"]
    for server in ("bbb1", "bbb2", "bbb4"):
        calls = [r for r in sim.requests(server) if r["call"] == "deleteRecordings"]
        assert len(calls) == 1 and all(r["checksum_ok"] for r in calls)
    unknown = await lb.call("deleteRecordings", {"recordID": "rec-404"})
    assert unknown.field("messageKey") == "notFound"


async def test_text_tracks_route_to_the_recording_server(recordings):
    reply = await recordings.call("getRecordingTextTracks", {"recordID": "rec-2"})
    assert reply.headers["Content-Type"].startswith("application/json")
    assert '"SUCCESS"' in reply.text
    missing = await recordings.call("getRecordingTextTracks", {"recordID": "rec-404"})
    assert '"FAILED"' in missing.text and "noRecordings" in missing.text


async def test_put_recording_text_track_forwards_the_multipart_upload(recordings, sim):
    boundary = "bbblbBoundary7d3"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"captions.vtt\"\r\n"
            "Content-Type: text/vtt\r\n\r\nWEBVTT\n\n00:00.000 --> 00:01.000\nHello\n\r\n"
            f"--{boundary}--\r\n").encode()
    url = recordings.sign("putRecordingTextTrack", "recordID=rec-3&kind=subtitles&lang=en-US&label=English")
    reply = await recordings.http(url, method="POST", data=body,
                                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert reply.headers["Content-Type"].startswith("application/json"), reply.text
    assert '"SUCCESS"' in reply.text, reply.text
    forwarded = [r for r in sim.requests("bbb3") if r["call"] == "putRecordingTextTrack"][-1]
    assert forwarded["checksum_ok"] and forwarded["body_length"] == len(body)
    assert f"boundary={boundary}" in forwarded["content_type"]


# --- getServers ------------------------------------------------------------------------------------------


async def test_get_servers_has_the_mconf_shape_and_no_secret(lb, sim):
    reply = await lb.call("getServers")
    assert reply.field("returncode") == "SUCCESS"
    servers = reply.xml().findall("servers/server")
    assert [s.findtext("name") for s in servers] == [s["name"] for s in sim.servers]
    for node in servers:
        assert [c.tag for c in node] == ["name", "address", "url", "apiUrl", "status", "disableState", "geoloc",
                                         "isDisabled"]
        assert [c.tag for c in node.find("geoloc")] == GEOLOC
        assert node.findtext("apiUrl").endswith("/bigbluebutton/api")
        assert node.findtext("disableState") == "3" and node.findtext("isDisabled") == "false"
        assert node.findtext("status") in ("1", "2")
    for server in sim.servers:
        assert server["secret"] not in reply.text
    assert lb.secret not in reply.text


# --- getMeetingEvents ------------------------------------------------------------------------------------


async def events(lb, *params: tuple[str, str]) -> list:  # type: ignore[type-arg]
    reply = await lb.call("getMeetingEvents", list(params))
    assert reply.field("returncode") == "SUCCESS", reply.text
    return reply.xml().findall("events/event")


def server_of_event(sim, meeting_id: str) -> str:
    for server in sim.servers:
        for request in sim.requests(server["name"]):
            if request["call"] == "create" and f"meetingID={meeting_id}&" in request["raw_query"] + "&":
                return server["name"]
    raise AssertionError(meeting_id)


async def test_meeting_events_record_creates_joins_and_ends(lb, sim):
    await create(lb, "ev-1", name="Events one", meta_course="Physics 1", voiceBridge="73333")
    await lb.call("join", {"meetingID": "ev-1", "fullName": "Ann Moderator", "password": "mp"})
    await lb.call("join", {"meetingID": "ev-1", "fullName": "Bob", "password": "ap"})
    await lb.call("join", {"meetingID": "ev-1", "fullName": "Bob", "password": "ap"})
    await create(lb, "ev-2")
    await lb.call("join", {"meetingID": "ev-2", "fullName": "Cid", "role": "VIEWER"})
    await create(lb, "ev-empty")
    await lb.call("end", {"meetingID": "ev-1", "password": "mp"})

    found = await events(lb)
    assert [e.findtext("meetingID") for e in found] == ["ev-2", "ev-1"]  # newest first, users >= 1
    first = found[1]
    assert first.findtext("name") == "Events one"
    assert re.fullmatch(r"\d{13}", first.findtext("createdAt"))
    assert re.fullmatch(r"\d{13}", first.findtext("endedAt"))
    assert first.findtext("server/name") == server_of_event(sim, "ev-1")
    users = [(u.findtext("name"), u.findtext("role")) for u in first.iterfind("users/user")]
    assert users == [("Ann Moderator", "moderator"), ("Bob", "attendee"), ("Bob", "attendee")]
    assert first.findtext("query/meta_course") == "Physics 1"
    assert first.findtext("query/voiceBridge") == "73333"
    assert first.find("query/checksum") is None
    assert found[0].find("endedAt") is None

    with_empty = await events(lb, ("users", "0"))
    assert [e.findtext("meetingID") for e in with_empty] == ["ev-empty", "ev-2", "ev-1"]
    empty = with_empty[0]
    assert empty.find("users") is not None and len(empty.find("users")) == 0
    assert "<users/>" in (await lb.call("getMeetingEvents", [("users", "0")])).text
    assert [e.findtext("meetingID") for e in await events(lb, ("users", "3"))] == ["ev-1"]
    assert len(await events(lb, ("limit", "1"))) == 1
    assert len(await events(lb, ("users", "0"), ("limit", "500"))) == 3


async def test_meeting_event_date_filters(lb):
    await create(lb, "when-1")
    await lb.call("join", {"meetingID": "when-1", "fullName": "Ann", "password": "mp"})
    await create(lb, "when-2")
    await lb.call("join", {"meetingID": "when-2", "fullName": "Ann", "password": "mp"})
    await lb.call("end", {"meetingID": "when-1", "password": "mp"})
    today = datetime.now(UTC).date()
    yesterday, tomorrow = (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()
    today_s = today.isoformat()

    async def ids(*params: tuple[str, str]) -> list[str]:
        return [e.findtext("meetingID") for e in await events(lb, *params)]

    assert await ids(("createdAt", today_s)) == ["when-2", "when-1"]
    assert await ids(("createdAt", tomorrow)) == []
    assert await ids(("createdAt", yesterday), ("createdAt", today_s)) == ["when-2", "when-1"]
    assert await ids(("createdAt", yesterday), ("createdAt", yesterday)) == []
    assert await ids(("endedAt", today_s)) == ["when-1"]
    assert await ids(("endedAt", yesterday)) == []
    assert "<events/>" in (await lb.call("getMeetingEvents", [("createdAt", tomorrow)])).text
    for bad in (("createdAt", "2024-13-01"), ("createdAt", "yesterday"), ("users", "-1"), ("limit", "ten"),
                ("endedAt", "2024-1-1")):
        reply = await lb.call("getMeetingEvents", [bad])
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "invalidParameters"), bad


@pytest.mark.parametrize("store", ["memory", "tinydb"])
async def test_meeting_events_survive_a_restart(lb_factory, store):
    lb = await lb_factory(store=store)
    await create(lb, "durable-ev")
    await lb.call("join", {"meetingID": "durable-ev", "fullName": "Persisted", "password": "mp"})
    await lb.restart()
    found = await events(lb)
    assert [e.findtext("meetingID") for e in found] == ["durable-ev"]
    assert found[0].findtext("users/user/name") == "Persisted"


# --- create as the Mconf-LB changed it -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["meta_mconflb-guid", "meta_MCONFLB-INSTITUTION", "meta_Mconflb-Rec-Server-Key",
                                 "meta_mconflb-institution-name", "meta_mconflb-rec-server",
                                 "meta_mconflb-rec-server-url"])
async def test_reserved_metadata_is_refused(lb, sim, key):
    reply = await lb.call("create", {"meetingID": "reserved", "name": "Reserved", key: "x"})
    assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "invalidParameters")
    assert reply.field("message") == "The URL you supplied has parameters that are not accepted."
    assert all("reserved" not in sim.meetings(s["name"]) for s in sim.servers)


async def test_the_lb_adds_its_own_metadata(lb, sim):
    await create(lb, "tagged")
    metadata = sim.meeting(sim.server_of("tagged"), "tagged").metadata
    assert metadata["mconflb-institution"] == "default"
    assert metadata["mconflb-institution-name"] == "default"
    assert re.fullmatch(r"[0-9a-f]{32}", metadata["mconflb-guid"])


@pytest.mark.parametrize("how", ["name", "url", "api"])
async def test_preferred_server_is_used_and_never_forwarded(lb, sim, how):
    target = sim.servers[3]
    value = {"name": target["name"], "url": target["url"], "api": target["url"] + "api"}[how]
    await create(lb, f"pref-{how}", preferredServer=value)
    assert sim.server_of(f"pref-{how}") == target["name"]
    forwarded = [r for r in sim.requests(target["name"]) if r["call"] == "create"][-1]
    assert "preferredServer" not in forwarded["raw_query"]


async def test_an_unknown_preferred_server_is_ignored(lb, sim):
    await create(lb, "pref-unknown", preferredServer="nowhere.example")
    sim.server_of("pref-unknown")


async def test_voice_bridge_is_unique_per_server(lb, sim):
    first = await create(lb, "vb-1", voiceBridge="71111", preferredServer="bbb1")
    assert first.field("voiceBridge") == "71111"
    second = await create(lb, "vb-2", voiceBridge="71111", preferredServer="bbb1")
    assert sim.server_of("vb-2") == "bbb1"
    assert re.fullmatch(r"7\d{4}", second.field("voiceBridge")) and second.field("voiceBridge") != "71111"
    elsewhere = await create(lb, "vb-3", voiceBridge="71111", preferredServer="bbb2")
    assert elsewhere.field("voiceBridge") == "71111"


# --- config.xml ----------------------------------------------------------------------------------------


async def test_config_xml_is_rewritten_both_ways(lb, sim):
    reply = await lb.call("getDefaultConfigXML")
    assert reply.status == 200 and reply.xml().tag == "config"
    lb_netloc = lb.url.split("://")[1]
    assert lb_netloc in reply.text
    for server in sim.servers:
        assert server["url"].split("/")[2] not in reply.text
    await create(lb, "cfg", preferredServer="bbb2")
    config_xml = reply.text
    form = urlencode({"configXML": config_xml, "meetingID": "cfg"})
    legacy = checksum.legacy_params_query(parse_qsl(form))
    digest = checksum.compute("setConfigXML", legacy, lb.secret, "sha1")
    answer = await lb.http(lb.api + "setConfigXML", method="POST", data=f"{form}&checksum={digest}".encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.field("returncode") == "SUCCESS", answer.text
    assert answer.field("token")
    stored = sim.server("bbb2").config_xmls["cfg"]
    bbb2 = sim.servers[1]["url"].split("/")[2]
    assert bbb2 in stored and lb_netloc not in stored


async def test_servers_without_config_xml_answer_their_own_error(lb_factory):
    import bbbsim

    new_server = await start_sim([bbbsim.ServerSpec("bbb-new", "http://127.0.0.1:0/bigbluebutton/", "new-secret",
                                                    config_xml=False)])
    try:
        lb = await lb_factory(simulator=new_server)
        reply = await lb.call("getDefaultConfigXML")
        assert reply.field("returncode") == "FAILED" and reply.field("messageKey"), reply.text
        assert [r["call"] for r in new_server.requests("bbb-new")].count("getDefaultConfigXML") == 1
    finally:
        await new_server.cluster.stop()


# --- other routed calls --------------------------------------------------------------------------------


async def test_insert_document_and_chat_are_routed(lb, sim):
    await create(lb, "doc-room", preferredServer="bbb3")
    document = b'<modules><module name="presentation"><document url="http://x/y.pdf"/></module></modules>'
    reply = await lb.http(lb.sign("insertDocument", "meetingID=doc-room"), method="POST", data=document,
                          headers={"Content-Type": "application/xml"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    chat = await lb.call("sendChatMessage", {"meetingID": "doc-room", "message": "hello & <all>", "userName": "LB"})
    assert chat.field("returncode") == "SUCCESS", chat.text
    meeting = sim.meeting("bbb3", "doc-room")
    assert meeting.documents and "hello & <all>" in str(meeting.chat)


@pytest.mark.parametrize("call", ["getJoinUrl", "getSessions", "hooks/create", "feedback", "enter"])
async def test_calls_bbb_lb_does_not_serve_answer_unsupported(lb, call):
    reply = await lb.call(call, {"meetingID": "x"})
    assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "unsupportedRequest")
