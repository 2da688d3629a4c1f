"""The whole API surface: merged calls and the Mconf-LB extras, through a real bbb-lb process."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

import pytest
from bigbluebutton_api_python import BigBlueButton

from lb_core import checksum
from tests.conftest import http
from tests.e2e.test_gateway import server_of

GEOLOC = ["address", "ip", "countryCode", "countryCode3", "countryName", "city", "latitude", "longitude",
          "continentCode"]


def create(lb, meeting_id: str, **params: str):  # type: ignore[no-untyped-def]
    reply = lb.call("create", {"meetingID": meeting_id, "name": f"Meeting {meeting_id}", "moderatorPW": "mp",
                               "attendeePW": "ap", **params})
    assert reply.field("returncode") == "SUCCESS", reply.text
    return reply


# --- getMeetings -----------------------------------------------------------------------------------------


def test_get_meetings_merges_every_server_with_the_server_block(lb, sim):
    for i in range(5):
        create(lb, f"gm-{i}", preferredServer=f"bbb{i + 1}")
    bbb = BigBlueButton(lb.api, lb.secret)
    meetings = bbb.get_meetings().get_field("meetings")["meeting"]
    assert sorted(str(m["meetingID"]) for m in meetings) == [f"gm-{i}" for i in range(5)]
    root = lb.call("getMeetings").xml()
    for meeting in root.iterfind("meetings/meeting"):
        expected = next(s for s in sim.servers if s["name"] == server_of(sim, meeting.findtext("meetingID")))
        assert meeting.findtext("server/name") == expected["name"]
        assert meeting.findtext("server/address") == "127.0.0.1"
        assert expected["url"].startswith(meeting.findtext("server/url"))
    assert "secret" not in lb.call("getMeetings").text


@pytest.mark.parametrize("fault", ["refuse", "hang", "503"])
def test_get_meetings_leaves_out_a_broken_server(lb_factory, sim, fault):
    lb = lb_factory(monitor={"interval_s": 60, "timeout_s": 1.0})
    for i in range(3):
        create(lb, f"down-{i}", preferredServer=f"bbb{i + 1}")
    sim.fault("bbb2", fault)
    try:
        reply = lb.call("getMeetings", timeout=10)
        assert reply.field("returncode") == "SUCCESS"
        ids = sorted(m.findtext("meetingID") for m in reply.xml().iterfind("meetings/meeting"))
        assert ids == ["down-0", "down-2"]
    finally:
        sim.fault("bbb2", "ok")


def test_get_meetings_without_meetings(lb):
    reply = lb.call("getMeetings")
    assert reply.field("returncode") == "SUCCESS" and reply.field("messageKey") == "noMeetings"
    assert reply.xml().find("meetings") is not None


# --- getRecordings and recording actions --------------------------------------------------------------


def add_recording(sim, server: str, meeting_id: str, record_id: str, **extra):  # type: ignore[no-untyped-def]
    sim.control(f"/servers/{server}/recordings", {"meetingID": meeting_id, "recordID": record_id, **extra})


@pytest.fixture
def recordings(lb, sim):  # type: ignore[no-untyped-def]
    add_recording(sim, "bbb1", "m-a", "rec-1", meta={"presenter": "joe", "category": "education"})
    add_recording(sim, "bbb2", "m-a", "rec-2", meta={"presenter": "joe", "category": "sports"})
    add_recording(sim, "bbb3", "m-b", "rec-3", meta={"presenter": "ann"}, state="unpublished", published=False)
    add_recording(sim, "bbb4", "m-c", "rec-4", meta={"presenter": "joe", "category": "education"})
    return lb


def record_ids(reply) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(r.findtext("recordID") for r in reply.xml().iterfind("recordings/recording"))


def test_get_recordings_merges_and_filters(recordings, sim):
    lb = recordings
    assert record_ids(lb.call("getRecordings")) == ["rec-1", "rec-2", "rec-3", "rec-4"]
    assert record_ids(lb.call("getRecordings", {"meetingID": "m-a,m-c"})) == ["rec-1", "rec-2", "rec-4"]
    assert record_ids(lb.call("getRecordings", {"recordID": "rec-3,rec-4"})) == ["rec-3", "rec-4"]
    assert record_ids(lb.call("getRecordings", {"state": "unpublished"})) == ["rec-3"]
    both = lb.call("getRecordings", {"meta_presenter": "joe", "meta_category": "education"})
    assert record_ids(both) == ["rec-1", "rec-4"]
    combined = lb.call("getRecordings", {"meetingID": "m-a", "meta_category": "education"})
    assert record_ids(combined) == ["rec-1"]
    page = lb.call("getRecordings", {"offset": "1", "limit": "2"})
    assert len(record_ids(page)) == 2
    none = lb.call("getRecordings", {"meetingID": "nothing-here"})
    assert none.field("messageKey") == "noRecordings" and none.field("returncode") == "SUCCESS"
    bad = lb.call("getRecordings", {"limit": "-1"})
    assert bad.field("messageKey") == "invalidParameters"
    bbb = BigBlueButton(lb.api, lb.secret)
    assert bbb.get_recordings().get_field("returncode") == "SUCCESS"


def test_get_recordings_survives_a_down_server(recordings, sim):
    sim.fault("bbb2", "refuse")
    try:
        assert record_ids(recordings.call("getRecordings", timeout=10)) == ["rec-1", "rec-3", "rec-4"]
    finally:
        sim.fault("bbb2", "ok")


def test_recording_actions_go_to_each_holder(recordings, sim):
    lb = recordings
    published = lb.call("publishRecordings", {"recordID": "rec-1,rec-3", "publish": "true"})
    assert published.field("returncode") == "SUCCESS" and published.field("published") == "true"
    assert record_ids(lb.call("getRecordings", {"state": "published"})) == ["rec-1", "rec-2", "rec-3", "rec-4"]
    updated = lb.call("updateRecordings", {"recordID": "rec-2,rec-4", "meta_category": "archive"})
    assert updated.field("updated") == "true"
    assert record_ids(lb.call("getRecordings", {"meta_category": "archive"})) == ["rec-2", "rec-4"]
    deleted = lb.call("deleteRecordings", {"recordID": "rec-1,rec-2,rec-4"})
    assert deleted.field("deleted") == "true"
    assert record_ids(lb.call("getRecordings")) == ["rec-3"]
    for server in ("bbb1", "bbb2", "bbb4"):
        calls = [r for r in sim.requests(server) if r["call"] == "deleteRecordings"]
        assert len(calls) == 1 and all(r["checksum_ok"] for r in calls)
    unknown = lb.call("deleteRecordings", {"recordID": "rec-404"})
    assert unknown.field("messageKey") == "notFound"


def test_text_tracks_route_to_the_recording_server(recordings):
    reply = recordings.call("getRecordingTextTracks", {"recordID": "rec-2"})
    assert reply.headers["Content-Type"].startswith("application/json")
    assert '"SUCCESS"' in reply.text
    missing = recordings.call("getRecordingTextTracks", {"recordID": "rec-404"})
    assert '"FAILED"' in missing.text and "noRecordings" in missing.text


# --- getServers ------------------------------------------------------------------------------------------


def test_get_servers_has_the_mconf_shape_and_no_secret(lb, sim):
    reply = lb.call("getServers")
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


def events(lb, *params: tuple[str, str]) -> list:  # type: ignore[type-arg]
    reply = lb.call("getMeetingEvents", list(params))
    assert reply.field("returncode") == "SUCCESS", reply.text
    return reply.xml().findall("events/event")


def test_meeting_events_record_creates_joins_and_ends(lb, sim):
    create(lb, "ev-1", name="Events one", meta_course="Physics 1", voiceBridge="73333")
    lb.call("join", {"meetingID": "ev-1", "fullName": "Ann Moderator", "password": "mp"})
    lb.call("join", {"meetingID": "ev-1", "fullName": "Bob", "password": "ap"})
    lb.call("join", {"meetingID": "ev-1", "fullName": "Bob", "password": "ap"})
    create(lb, "ev-2")
    lb.call("join", {"meetingID": "ev-2", "fullName": "Cid", "role": "VIEWER"})
    create(lb, "ev-empty")
    lb.call("end", {"meetingID": "ev-1", "password": "mp"})

    found = events(lb)
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

    with_empty = events(lb, ("users", "0"))
    assert [e.findtext("meetingID") for e in with_empty] == ["ev-empty", "ev-2", "ev-1"]
    empty = with_empty[0]
    assert empty.find("users") is not None and len(empty.find("users")) == 0
    assert "<users/>" in lb.call("getMeetingEvents", [("users", "0")]).text
    assert [e.findtext("meetingID") for e in events(lb, ("users", "3"))] == ["ev-1"]
    assert len(events(lb, ("limit", "1"))) == 1
    assert len(events(lb, ("users", "0"), ("limit", "500"))) == 3


def server_of_event(sim, meeting_id: str) -> str:
    for server in sim.servers:
        for request in sim.requests(server["name"]):
            if request["call"] == "create" and f"meetingID={meeting_id}&" in request["raw_query"] + "&":
                return server["name"]
    raise AssertionError(meeting_id)


def test_meeting_event_date_filters(lb):
    create(lb, "when-1")
    lb.call("join", {"meetingID": "when-1", "fullName": "Ann", "password": "mp"})
    create(lb, "when-2")
    lb.call("join", {"meetingID": "when-2", "fullName": "Ann", "password": "mp"})
    lb.call("end", {"meetingID": "when-1", "password": "mp"})
    today = datetime.now(UTC).date()
    yesterday, tomorrow = (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()
    today_s = today.isoformat()

    def ids(*params: tuple[str, str]) -> list[str]:
        return [e.findtext("meetingID") for e in events(lb, *params)]

    assert ids(("createdAt", today_s)) == ["when-2", "when-1"]
    assert ids(("createdAt", tomorrow)) == []
    assert ids(("createdAt", yesterday), ("createdAt", today_s)) == ["when-2", "when-1"]
    assert ids(("createdAt", yesterday), ("createdAt", yesterday)) == []
    assert ids(("endedAt", today_s)) == ["when-1"]
    assert ids(("endedAt", yesterday)) == []
    assert "<events/>" in lb.call("getMeetingEvents", [("createdAt", tomorrow)]).text
    for bad in (("createdAt", "2024-13-01"), ("createdAt", "yesterday"), ("users", "-1"), ("limit", "ten"),
                ("endedAt", "2024-1-1")):
        reply = lb.call("getMeetingEvents", [bad])
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "invalidParameters"), bad


def test_meeting_events_survive_a_restart(lb):
    create(lb, "durable-ev")
    lb.call("join", {"meetingID": "durable-ev", "fullName": "Persisted", "password": "mp"})
    lb.restart()
    found = events(lb)
    assert [e.findtext("meetingID") for e in found] == ["durable-ev"]
    assert found[0].findtext("users/user/name") == "Persisted"


# --- create as the Mconf-LB changed it -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["meta_mconflb-guid", "meta_MCONFLB-INSTITUTION", "meta_Mconflb-Rec-Server-Key",
                                 "meta_mconflb-institution-name", "meta_mconflb-rec-server",
                                 "meta_mconflb-rec-server-url"])
def test_reserved_metadata_is_refused(lb, sim, key):
    reply = lb.call("create", {"meetingID": "reserved", "name": "Reserved", key: "x"})
    assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "invalidParameters")
    assert reply.field("message") == "The URL you supplied has parameters that are not accepted."
    assert all("reserved" not in s["meetings"] for s in sim.control("/servers"))


def test_the_lb_adds_its_own_metadata(lb, sim):
    create(lb, "tagged")
    server = server_of(sim, "tagged")
    metadata = sim.control(f"/servers/{server}/meetings/tagged")["metadata"]
    assert metadata["mconflb-institution"] == "default"
    assert metadata["mconflb-institution-name"] == "default"
    assert re.fullmatch(r"[0-9a-f]{32}", metadata["mconflb-guid"])


@pytest.mark.parametrize("how", ["name", "url", "api"])
def test_preferred_server_is_used_and_never_forwarded(lb, sim, how):
    target = sim.servers[3]
    value = {"name": target["name"], "url": target["url"], "api": target["url"] + "api"}[how]
    create(lb, f"pref-{how}", preferredServer=value)
    assert server_of(sim, f"pref-{how}") == target["name"]
    forwarded = [r for r in sim.requests(target["name"]) if r["call"] == "create"][-1]
    assert "preferredServer" not in forwarded["raw_query"]


def test_an_unknown_preferred_server_is_ignored(lb, sim):
    create(lb, "pref-unknown", preferredServer="nowhere.example")
    server_of(sim, "pref-unknown")


def test_voice_bridge_is_unique_per_server(lb, sim):
    first = create(lb, "vb-1", voiceBridge="71111", preferredServer="bbb1")
    assert first.field("voiceBridge") == "71111"
    second = create(lb, "vb-2", voiceBridge="71111", preferredServer="bbb1")
    assert server_of(sim, "vb-2") == "bbb1"
    assert re.fullmatch(r"7\d{4}", second.field("voiceBridge")) and second.field("voiceBridge") != "71111"
    elsewhere = create(lb, "vb-3", voiceBridge="71111", preferredServer="bbb2")
    assert elsewhere.field("voiceBridge") == "71111"


# --- config.xml ----------------------------------------------------------------------------------------


def test_config_xml_is_rewritten_both_ways(lb, sim):
    reply = lb.call("getDefaultConfigXML")
    assert reply.status == 200 and reply.xml().tag == "config"
    lb_netloc = lb.url.split("://")[1]
    assert lb_netloc in reply.text
    for server in sim.servers:
        assert server["url"].split("/")[2] not in reply.text
    create(lb, "cfg", preferredServer="bbb2")
    config_xml = reply.text
    form = urlencode({"configXML": config_xml, "meetingID": "cfg"})
    legacy = checksum.legacy_params_query(parse_qsl(form))
    digest = checksum.compute("setConfigXML", legacy, lb.secret, "sha1")
    answer = http(lb.api + "setConfigXML", method="POST", data=f"{form}&checksum={digest}".encode(),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.field("returncode") == "SUCCESS", answer.text
    assert answer.field("token")
    stored = http(sim.control_url + "/servers/bbb2/config_xml/cfg").text
    bbb2 = sim.servers[1]["url"].split("/")[2]
    assert bbb2 in stored and lb_netloc not in stored


# --- other routed calls --------------------------------------------------------------------------------


def test_insert_document_and_chat_are_routed(lb, sim):
    create(lb, "doc-room", preferredServer="bbb3")
    document = b'<modules><module name="presentation"><document url="http://x/y.pdf"/></module></modules>'
    reply = http(lb.sign("insertDocument", "meetingID=doc-room"), method="POST", data=document,
                 headers={"Content-Type": "application/xml"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    chat = lb.call("sendChatMessage", {"meetingID": "doc-room", "message": "hello & <all>", "userName": "LB"})
    assert chat.field("returncode") == "SUCCESS", chat.text
    state = sim.control("/servers/bbb3/meetings/doc-room")
    assert state["documents"] and "hello & <all>" in str(state["chat"])


def test_servers_without_config_xml_answer_their_own_error(tmp_path):
    from tests.conftest import LB, free_port, start_simulator_for

    new_server = start_simulator_for([{"name": "bbb-new", "url": f"http://127.0.0.1:{free_port()}/bigbluebutton/",
                                       "secret": "new-secret", "config_xml": False}])
    lb = LB(tmp_path / "c.yaml", {"listen": {"host": "127.0.0.1", "port": free_port()}, "secret": "lb-secret",
                                  "servers": [{k: v for k, v in new_server.servers[0].items() if k != "config_xml"}],
                                  "store": {"path": str(tmp_path / "lb.json")}}, tmp_path / "lb.log")
    try:
        lb.start()
        reply = lb.call("getDefaultConfigXML")
        assert reply.field("returncode") == "FAILED" and reply.field("messageKey"), reply.text
        assert [r["call"] for r in new_server.requests("bbb-new")].count("getDefaultConfigXML") == 1
    finally:
        if lb.process is not None:
            lb.stop()
        new_server.process.terminate()
        new_server.process.wait(10)


def test_put_recording_text_track_forwards_the_multipart_upload(recordings, sim):
    boundary = "bbblbBoundary7d3"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"captions.vtt\"\r\n"
            "Content-Type: text/vtt\r\n\r\nWEBVTT\n\n00:00.000 --> 00:01.000\nHello\n\r\n"
            f"--{boundary}--\r\n").encode()
    url = recordings.sign("putRecordingTextTrack", "recordID=rec-3&kind=subtitles&lang=en-US&label=English")
    reply = http(url, method="POST", data=body,
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert reply.headers["Content-Type"].startswith("application/json"), reply.text
    assert '"SUCCESS"' in reply.text, reply.text
    forwarded = [r for r in sim.requests("bbb3") if r["call"] == "putRecordingTextTrack"][-1]
    assert forwarded["checksum_ok"] and forwarded["body_length"] == len(body)
    assert f"boundary={boundary}" in forwarded["content_type"]


@pytest.mark.parametrize("call", ["getJoinUrl", "getSessions", "hooks/create", "feedback", "enter"])
def test_calls_bbb_lb_does_not_serve_answer_unsupported(lb, call):
    reply = lb.call(call, {"meetingID": "x"})
    assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "unsupportedRequest")
