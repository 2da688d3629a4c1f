"""No integration reaches another's meetings or recordings, whatever IDs, parameters or methods it sends."""

from __future__ import annotations

import concurrent.futures
import threading
from urllib.parse import parse_qsl, urlencode

import pytest

from lb_core import checksum
from tests.conftest import http, wait_for
from tests.e2e.test_integrations import INTEGRATIONS, create, holders
from tests.e2e.test_integrations import receiver as receiver  # noqa: F401 - the fixture, shared


@pytest.fixture
def lb(lb_factory):  # type: ignore[no-untyped-def]
    return lb_factory(integrations=INTEGRATIONS,
                      callbacks={"retry_delays_s": [0.2, 0.2, 0.3, 0.5, 1], "allowed_networks": ["127.0.0.0/8"]},
                      monitor={"interval_s": 30, "timeout_s": 1}, cache={"is_meeting_running_s": 30})


MOODLE = "moodle-secret"


def refused(reply, key: str = "invalidParameters") -> bool:  # type: ignore[no-untyped-def]
    return (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", key)


def direct(sim, server: int, call: str, params: dict[str, str]):  # type: ignore[no-untyped-def]
    """A call straight to a simulated backend, signed with its own secret (not through the LB)."""
    spec = sim.servers[server]
    return http(f"{spec['url']}api/{call}?{checksum.sign(call, urlencode(params), spec['secret'])}")


# --- internal meeting IDs ------------------------------------------------------------------------------------


def test_a_meeting_id_shaped_like_an_internal_id_is_refused(lb, sim):
    victim = create(lb, "victim-room", MOODLE, preferredServer="bbb2")
    internal = victim.field("internalMeetingID")
    assert holders(sim, "victim-room") == ["bbb2"]
    for shaped in (internal, internal.upper(), f" {internal}", "0" * 40 + "-1234567890123"):
        reply = create(lb, shaped, preferredServer="bbb2")
        assert refused(reply), reply.text
        assert "internal meeting ID" in reply.field("message")
    assert all(internal not in s["meetings"] for s in sim.control("/servers"))
    # No other call reaches it either: the attacker has no mapping for that ID.
    for call, params in (("join", {"fullName": "Eve", "role": "MODERATOR"}), ("end", {}),
                         ("getMeetingInfo", {}), ("insertDocument", {}), ("sendChatMessage", {"message": "hi"})):
        reply = lb.call(call, {"meetingID": internal, **params})
        assert reply.status != 302 and reply.field("messageKey") == "notFound", (call, reply.text)
    assert lb.call("isMeetingRunning", {"meetingID": internal}).field("running") == "false"
    assert lb.call("getMeetingInfo", {"meetingID": "victim-room"}, secret=MOODLE).field("returncode") == "SUCCESS"


# --- concurrent creates of one ID ----------------------------------------------------------------------------


def test_concurrent_creates_of_one_id_by_two_integrations_never_merge(lb, sim):
    sim.fault("bbb1", "slow", delay_ms=400)  # both creates are in flight on bbb1 at once
    try:
        start = threading.Barrier(2)

        def one(secret: str | None):  # type: ignore[no-untyped-def]
            start.wait()
            return create(lb, "shared-room", secret, preferredServer="bbb1")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(one, [None, MOODLE]))
    finally:
        sim.fault("bbb1", "ok")
    assert [r.field("returncode") for r in replies] == ["SUCCESS", "SUCCESS"], [r.text for r in replies]
    assert all(r.field("messageKey") != "duplicateWarning" for r in replies)
    assert len(holders(sim, "shared-room")) == 2
    for secret, owner in ((None, "default"), (MOODLE, "moodle")):
        info = lb.call("getMeetingInfo", {"meetingID": "shared-room"}, secret=secret)
        assert info.field("metadata/mconflb-institution") == owner


def test_a_duplicate_of_a_meeting_the_lb_did_not_create_is_a_conflict(lb, sim):
    made = direct(sim, 0, "create", {"meetingID": "foreign", "name": "Foreign", "moderatorPW": "mp",
                                     "attendeePW": "ap"})
    assert made.field("returncode") == "SUCCESS"
    reply = create(lb, "foreign", MOODLE, preferredServer="bbb1")
    assert refused(reply, "idNotUnique"), reply.text
    assert b"internalMeetingID" not in reply.body
    assert lb.call("getMeetingInfo", {"meetingID": "foreign"}, secret=MOODLE).field("messageKey") == "notFound"


def test_a_duplicate_create_of_the_integrations_own_meeting_still_succeeds(lb, sim):
    first = create(lb, "again", MOODLE)
    second = create(lb, "again", MOODLE)
    assert second.field("messageKey") == "duplicateWarning"
    assert second.field("internalMeetingID") == first.field("internalMeetingID")


# --- reserved metadata on updateRecordings -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["meta_mconflb-institution", "meta_MCONFLB-INSTITUTION", "meta_mconflb-anything"])
def test_update_recordings_refuses_reserved_metadata(lb, sim, key):
    sim.control("/servers/bbb1/recordings", {"meetingID": "m", "recordID": "rec-own",
                                             "meta": {"mconflb-institution": "default"}})
    reply = lb.call("updateRecordings", {"recordID": "rec-own", key: "moodle"})
    assert refused(reply), reply.text
    assert reply.field("message") == "The URL you supplied has parameters that are not accepted."
    assert not [r for r in sim.requests("bbb1") if r["call"] == "updateRecordings"]
    mine = lb.call("getRecordings", {"recordID": "rec-own"}).xml()
    assert [r.findtext("recordID") for r in mine.iterfind("recordings/recording")] == ["rec-own"]
    assert lb.call("updateRecordings", {"recordID": "rec-own", "meta_topic": "x"}).field("returncode") == "SUCCESS"


# --- end callbacks -------------------------------------------------------------------------------------------


def test_a_forged_end_callback_neither_forgets_nor_relays(lb, sim, receiver):  # noqa: F811
    create(lb, "cb-live", MOODLE, **{"meta_endCallbackUrl": f"{receiver.url}/ended"})
    server = holders(sim, "cb-live")[0]
    # The LB's callback URL is in the meeting's metadata, which every client can read.
    callback_url = sim.control(f"/servers/{server}/meetings/cb-live")["metadata"]["endcallbackurl"]
    forged = http(callback_url + "?meetingID=other&recordingmarks=true&evil=1")
    assert forged.field("returncode") == "FAILED" and forged.field("messageKey") == "notEnded"
    assert lb.call("getMeetingInfo", {"meetingID": "cb-live"}, secret=MOODLE).field("returncode") == "SUCCESS"

    sim.control(f"/servers/{server}/meetings/cb-live/end", {})  # really ended: the real callback comes
    wait_for(lambda: receiver.calls, 10, what="the end callback")
    assert lb.call("getMeetingInfo", {"meetingID": "cb-live"}, secret=MOODLE).field("messageKey") == "notFound"
    method, path, _ = receiver.calls[0]
    assert method == "GET" and path.startswith("/ended?")
    assert dict(parse_qsl(path.partition("?")[2])) == {"meetingID": "cb-live", "recordingmarks": "false"}
    assert len(receiver.calls) == 1
    replay = http(callback_url + "?meetingID=cb-live")  # the token is spent once the end is relayed
    assert replay.status == 404


# --- duplicate parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "params"), [
    ("getMeetingInfo", [("meetingID", "dup-a"), ("meetingID", "dup-b")]),
    ("join", [("meetingID", "dup-a"), ("fullName", "Eve"), ("role", "VIEWER"), ("role", "MODERATOR")]),
    ("create", [("meetingID", "dup-c"), ("name", "Dup"), ("record", "false"), ("record", "true")]),
    ("deleteRecordings", [("recordID", "r-1"), ("recordID", "r-2")]),
])
def test_routing_parameters_given_twice_with_different_values_are_refused(lb, sim, call, params):
    create(lb, "dup-a")
    reply = lb.call(call, params)
    assert refused(reply), reply.text
    assert reply.status == 200


def test_a_routing_parameter_repeated_with_the_same_value_is_fine(lb, sim):
    create(lb, "dup-same")
    reply = lb.call("getMeetingInfo", [("meetingID", "dup-same"), ("meetingID", "dup-same")])
    assert reply.field("returncode") == "SUCCESS"


# --- GET-only calls ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["join", "publishRecordings", "deleteRecordings"])
def test_get_only_calls_do_nothing_on_post(lb, sim, call):
    create(lb, "post-room")
    sim.control("/servers/bbb1/recordings", {"meetingID": "m", "recordID": "rec-post", "state": "unpublished",
                                             "meta": {"mconflb-institution": "default"}})
    params = {"join": {"meetingID": "post-room", "fullName": "Ann", "password": "mp"},
              "publishRecordings": {"recordID": "rec-post", "publish": "true"},
              "deleteRecordings": {"recordID": "rec-post"}}[call]
    before = sum(len(sim.requests(s["name"])) for s in sim.servers)
    for body in (None, b""):  # the checksum in the URL, with or without a (form) body
        reply = lb.call(call, params, method="POST", data=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status == 405, reply.text
        assert refused(reply, "unsupportedRequest")
        assert reply.headers["Allow"] == "GET, HEAD"
    signed = checksum.sign(call, urlencode(params), "lb-secret")
    in_body = http(lb.api + call, method="POST", data=signed.encode(),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert in_body.status == 405 and refused(in_body, "unsupportedRequest")
    after = sum(len(sim.requests(s["name"])) for s in sim.servers)
    assert after == before
    state = lb.call("getRecordings", {"recordID": "rec-post", "state": "any"}).field("recordings/recording/state")
    assert state == "unpublished"
    assert lb.call(call, params).status in (200, 302)  # GET still works


# --- isMeetingRunning cache ----------------------------------------------------------------------------------


def test_a_join_drops_the_cached_is_meeting_running(lb, sim):
    create(lb, "cache-room")
    assert lb.call("isMeetingRunning", {"meetingID": "cache-room"}).field("running") == "false"
    joined = lb.call("join", {"meetingID": "cache-room", "fullName": "Ann", "password": "ap"})
    assert joined.status == 302
    assert http(joined.headers["Location"]).status == 302  # the browser arrives: the server now runs it
    assert lb.call("isMeetingRunning", {"meetingID": "cache-room"}).field("running") == "true"
    # redirect=false joins too
    create(lb, "cache-room-2")
    assert lb.call("isMeetingRunning", {"meetingID": "cache-room-2"}).field("running") == "false"
    xml_join = lb.call("join", {"meetingID": "cache-room-2", "fullName": "Ann", "password": "ap",
                                "redirect": "false"})
    assert xml_join.field("returncode") == "SUCCESS"
    assert lb.call("isMeetingRunning", {"meetingID": "cache-room-2"}).field("running") == "true"
