"""Several integrations with their own secrets, rights and isolation; callbacks through the LB."""

from __future__ import annotations

import concurrent.futures
import http.server as http_server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest

from tests.conftest import http, wait_for

INTEGRATIONS = [
    {"name": "moodle", "secret": "moodle-secret", "previous_secret": "moodle-old-secret"},
    {"name": "greenlight", "secret": "greenlight-secret", "can_record": False, "max_meetings": 3},
    {"name": "closed", "secret": "closed-secret", "enabled": False},
]
ACCESS = "This application is not currently allowed to access this API."
RECORD = "This application is not allowed to record meetings."
MEETINGS = "This application is not allowed to have any more concurrent meetings."


@pytest.fixture
def lb(lb_factory):  # type: ignore[no-untyped-def]
    # The receivers below listen on 127.0.0.1: callbacks may reach it only because this allows it.
    return lb_factory(integrations=INTEGRATIONS, callbacks={"retry_delays_s": [0.2, 0.2, 0.3, 0.5, 1],
                                                            "allowed_networks": ["127.0.0.0/8"]},
                      monitor={"interval_s": 30, "timeout_s": 1}, recordings={"sync_interval_s": 0.2})


def create(lb, meeting_id: str, secret: str | None = None, **params: str):  # type: ignore[no-untyped-def]
    return lb.call("create", {"meetingID": meeting_id, "name": f"Room {meeting_id}", "moderatorPW": "mp",
                              "attendeePW": "ap", **params}, secret=secret)


def holders(sim, meeting_id: str) -> list[str]:
    return sorted(s["name"] for s in sim.control("/servers") if meeting_id in s["meetings"])


def test_the_same_meeting_id_is_two_meetings(lb, sim):
    assert create(lb, "room").field("returncode") == "SUCCESS"
    assert create(lb, "room", "moodle-secret").field("returncode") == "SUCCESS"
    assert len(holders(sim, "room")) == 2
    mine = lb.call("getMeetingInfo", {"meetingID": "room"}).xml()
    theirs = lb.call("getMeetingInfo", {"meetingID": "room"}, secret="moodle-secret").xml()
    assert mine.findtext("metadata/mconflb-institution") == "default"
    assert theirs.findtext("metadata/mconflb-institution") == "moodle"
    assert theirs.findtext("metadata/mconflb-institution-name") == "moodle"

    lb.call("join", {"meetingID": "room", "fullName": "Moodle user", "password": "mp"}, secret="moodle-secret")
    default_join = lb.call("join", {"meetingID": "room", "fullName": "Default user", "password": "mp"})
    moodle_join = lb.call("join", {"meetingID": "room", "fullName": "M", "password": "mp"}, secret="moodle-secret")
    assert urlsplit(default_join.headers["Location"]).port != urlsplit(moodle_join.headers["Location"]).port

    ended = lb.call("end", {"meetingID": "room", "password": "mp"}, secret="moodle-secret")
    assert ended.field("returncode") == "SUCCESS"
    assert len(holders(sim, "room")) == 1
    assert lb.call("getMeetingInfo", {"meetingID": "room"}).field("returncode") == "SUCCESS"
    assert lb.call("getMeetingInfo", {"meetingID": "room"}, secret="moodle-secret").field("messageKey") == "notFound"


def test_every_listing_shows_only_the_integrations_own(lb, sim):
    create(lb, "d-1")
    create(lb, "m-1", "moodle-secret")
    create(lb, "m-2", "moodle-secret")
    for meeting_id, secret in (("d-1", None), ("m-1", "moodle-secret")):
        lb.call("join", {"meetingID": meeting_id, "fullName": "U", "password": "ap"}, secret=secret)

    def listed(secret: str | None) -> list[str]:
        root = lb.call("getMeetings", secret=secret).xml()
        return sorted(m.findtext("meetingID") for m in root.iterfind("meetings/meeting"))

    assert listed(None) == ["d-1"]
    assert listed("moodle-secret") == ["m-1", "m-2"]
    assert lb.call("getMeetings", secret="greenlight-secret").field("messageKey") == "noMeetings"

    sim.control("/servers/bbb1/recordings", {"meetingID": "d-1", "recordID": "rec-d",
                                             "meta": {"mconflb-institution": "default"}})
    sim.control("/servers/bbb2/recordings", {"meetingID": "m-1", "recordID": "rec-m",
                                             "meta": {"mconflb-institution": "moodle"}})
    sim.control("/servers/bbb3/recordings", {"meetingID": "legacy", "recordID": "rec-old"})

    def recordings(secret: str | None) -> list[str]:
        root = lb.call("getRecordings", secret=secret).xml()
        return sorted(r.findtext("recordID") for r in root.iterfind("recordings/recording"))

    wait_for(lambda: recordings(None) == ["rec-d", "rec-old"], what="the recordings index to sync")
    assert recordings("moodle-secret") == ["rec-m"]
    denied = lb.call("deleteRecordings", {"recordID": "rec-d"}, secret="moodle-secret")
    assert denied.field("messageKey") == "notFound"
    assert recordings(None) == ["rec-d", "rec-old"]

    def events(secret: str | None) -> list[str]:
        root = lb.call("getMeetingEvents", {"users": "0"}, secret=secret).xml()
        return sorted(e.findtext("meetingID") for e in root.iterfind("events/event"))

    assert events(None) == ["d-1"]
    assert events("moodle-secret") == ["m-1", "m-2"]
    assert lb.call("isMeetingRunning", {"meetingID": "d-1"}, secret="moodle-secret").field("running") == "false"


def test_permission_messages(lb, sim):
    for call, params in (("getMeetings", {}), ("create", {"meetingID": "x", "name": "Xx"}),
                         ("isMeetingRunning", {"meetingID": "x"})):
        reply = lb.call(call, params, secret="closed-secret")
        assert (reply.field("messageKey"), reply.field("message")) == ("permissionDenied", ACCESS)
    recorded = create(lb, "rec-room", "greenlight-secret", record="true")
    assert (recorded.field("messageKey"), recorded.field("message")) == ("permissionDenied", RECORD)
    assert holders(sim, "rec-room") == []
    assert create(lb, "norec-room", "greenlight-secret", record="false").field("returncode") == "SUCCESS"


def test_the_concurrent_meeting_limit_holds_under_concurrent_creates(lb, sim):
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda i: create(lb, f"gl-{i}", "greenlight-secret"), range(10)))
    ok = [r for r in replies if r.field("returncode") == "SUCCESS"]
    denied = [r for r in replies if r.field("messageKey") == "permissionDenied"]
    assert len(ok) == 3 and len(denied) == 7
    assert all(r.field("message") == MEETINGS for r in denied)
    # A duplicate create of a meeting it has is fine; ending one frees a place.
    running = [r.field("meetingID") for r in ok]
    assert create(lb, running[0], "greenlight-secret").field("returncode") == "SUCCESS"
    lb.call("end", {"meetingID": running[0], "password": "mp"}, secret="greenlight-secret")
    assert create(lb, "gl-next", "greenlight-secret").field("returncode") == "SUCCESS"


def test_secret_rotation(lb):
    assert create(lb, "rot", "moodle-secret").field("returncode") == "SUCCESS"
    old = lb.call("getMeetingInfo", {"meetingID": "rot"}, secret="moodle-old-secret")
    assert old.field("returncode") == "SUCCESS"
    assert lb.call("getMeetingInfo", {"meetingID": "rot"}, secret="guess").field("messageKey") == "checksumError"


# --- callbacks ---------------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A small HTTP server standing in for the integration."""

    port: int
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    fail_first: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(0)  # its port once bound

    class Handler(http_server.BaseHTTPRequestHandler):
        def _record(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            state.calls.append((method, self.path, dict(parse_qsl(body))))
            status = 503 if state.fail_first > 0 else 200
            state.fail_first -= 1
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            self._record("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._record("POST")

        def log_message(self, *args: object) -> None:
            pass

    server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def test_end_callback_is_learned_at_once_and_passed_on(lb, sim, receiver):
    create(lb, "cb-end", "moodle-secret", **{"meta_endCallbackUrl": f"{receiver.url}/ended?room=7"})
    server = holders(sim, "cb-end")[0]
    forwarded = [r for r in sim.requests(server) if r["call"] == "create"][-1]["raw_query"]
    assert receiver.url.replace(":", "%3A") not in forwarded and "lb%2Fcallback%2Fend" in forwarded
    lb.call("join", {"meetingID": "cb-end", "fullName": "Ann", "password": "mp"}, secret="moodle-secret")
    sim.control(f"/servers/{server}/meetings/cb-end/end", {})  # ended from inside the meeting
    wait_for(lambda: receiver.calls, 10, what="the end callback")
    method, path, _ = receiver.calls[0]
    assert method == "GET" and path.startswith("/ended?room=7&") and "meetingID=cb-end" in path
    assert "recordingmarks=" in path
    # The poller runs every 30 s here, so this was learned from the callback.
    info = lb.call("getMeetingInfo", {"meetingID": "cb-end"}, secret="moodle-secret")
    assert info.field("messageKey") == "notFound"
    event = lb.call("getMeetingEvents", {}, secret="moodle-secret").xml().find("events/event")
    assert event.findtext("meetingID") == "cb-end" and event.findtext("endedAt")


def test_recording_ready_is_signed_again_for_the_integration(lb, sim, receiver):
    receiver.fail_first = 2  # the integration is down at first: the LB retries with backoff
    create(lb, "cb-rec", "moodle-secret", record="true",
           **{"meta_bbb-recording-ready-url": f"{receiver.url}/recording"})
    lb.call("join", {"meetingID": "cb-rec", "fullName": "Ann", "password": "mp"}, secret="moodle-secret")
    lb.call("end", {"meetingID": "cb-rec", "password": "mp"}, secret="moodle-secret")
    posts = wait_for(lambda: [c for c in receiver.calls if c[0] == "POST"][2:], 15, what="a delivered callback")
    _, path, form = posts[0]
    assert path == "/recording"
    payload = jwt.decode(form["signed_parameters"], "moodle-secret", algorithms=["HS256"])  # as Moodle checks it
    assert payload["meeting_id"] == "cb-rec" and payload["record_id"]
    for server in sim.servers:
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(form["signed_parameters"], server["secret"], algorithms=["HS256"])


def test_forged_callbacks_are_refused(lb, sim, receiver):
    create(lb, "cb-forge", **{"meta_bbb-recording-ready-url": f"{receiver.url}/recording"})
    server = holders(sim, "cb-forge")[0]
    raw = [r for r in sim.requests(server) if r["call"] == "create"][-1]["raw_query"]
    callback_url = dict(parse_qsl(raw))["meta_bbb-recording-ready-url"]
    forged = jwt.encode({"meeting_id": "cb-forge", "record_id": "r"}, "not-the-server-secret", algorithm="HS256")
    reply = http(callback_url, method="POST", data=f"signed_parameters={forged}".encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 401 and reply.field("returncode") == "FAILED"
    unknown = http(lb.url + "/bigbluebutton/lb/callback/recording/nope", method="POST", data=b"x=1")
    assert unknown.status == 404 and unknown.headers["Content-Type"] == "text/xml;charset=utf-8"
    # A fence: a genuine callback for the same meeting arrives; the forged one, sent before it, never does.
    server_secret = next(s["secret"] for s in sim.servers if s["name"] == server)
    genuine = jwt.encode({"meeting_id": "cb-forge", "record_id": "genuine"}, server_secret, algorithm="HS256")
    assert http(callback_url, method="POST", data=f"signed_parameters={genuine}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"}).status == 200
    wait_for(lambda: receiver.calls, 10, what="the genuine callback")
    relayed = [jwt.decode(body["signed_parameters"], options={"verify_signature": False})
               for _, _, body in receiver.calls]
    assert [r["record_id"] for r in relayed] == ["genuine"]
