"""A backend that answers garbage, resets or hangs: its signed URL shows up nowhere outside the request."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import io

from tests.conftest import LB, Simulator, http, make_lb, wait_for

TOKEN = "h" * 24
LISTING = (b"<response><returncode>SUCCESS</returncode><meetings/><messageKey>noMeetings</messageKey>"
           b"<message>no meetings were found on this server</message></response>")


class BrokenBackend:
    """Answers getMeetings properly (so it is placed on), anything else per ``mode``; ``mode='all'``
    breaks the polls too. Modes: garbage (not HTTP), reset (RST), hang (no answer)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.break_polls = False
        backend = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(5)
                try:
                    head = self.request.recv(65536)
                except OSError:
                    return
                if b"/api/getMeetings" in head.split(b"\r\n", 1)[0] and not backend.break_polls:
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n"
                                         b"Content-Length: %d\r\n\r\n%s" % (len(LISTING), LISTING))
                    return
                if backend.mode == "garbage":
                    self.request.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                elif backend.mode == "reset":
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                else:  # hang until the LB gives up
                    try:
                        self.request.recv(1)
                    except OSError:
                        pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def spec(self) -> dict[str, str]:
        return {"name": f"broken-{self.mode}", "url": f"http://127.0.0.1:{self.port}/bigbluebutton/",
                "secret": f"{self.mode}-secret"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broken() -> Iterator[list[BrokenBackend]]:
    backends = [BrokenBackend(mode) for mode in ("garbage", "reset", "hang")]
    yield backends
    for backend in backends:
        backend.stop()


def test_no_checksum_in_log_admin_api_or_flows(tmp_path: Path, sim: Simulator, broken: list[BrokenBackend]):
    sim.reset()
    capture = tmp_path / "capture.flows"
    lb: LB = make_lb(tmp_path, sim, servers=[],
                     admin={"host": "127.0.0.1", "port": 0, "token": TOKEN},
                     monitor={"interval_s": 0.3, "timeout_s": 1.0, "down_after": 1, "up_after": 1},
                     backend={"timeout_s": 1.0, "connect_timeout_s": 0.5})
    lb.config["servers"] = [b.spec for b in broken]
    lb.extra_args = ["--save", str(capture)]
    lb.start()
    try:
        admin = f"http://127.0.0.1:{lb.config['admin']['port']}"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def servers() -> dict[str, dict]:  # type: ignore[type-arg]
            return {s["name"]: s for s in json.loads(http(admin + "/api/servers", headers=auth).body)}

        def up() -> bool:
            try:
                return all(s["status"] == "up" for s in servers().values())
            except OSError:  # the admin listener comes up just after the API one
                return False

        wait_for(up, 15, what="the backends to be up")
        # Every create is tried on the broken servers in turn; each fails in its own way.
        for n in range(3):
            lb.call("create", {"meetingID": f"leak-{n}", "name": "Leak", "moderatorPW": "mp", "attendeePW": "ap"})
        lb.call("getMeetingInfo", {"meetingID": "leak-0"})
        for backend in broken:
            backend.break_polls = True
        wait_for(lambda: all(s["last_error"] for s in servers().values()), 15, what="failed polls")
        listing = http(admin + "/api/servers", headers=auth).text
        get_servers = lb.call("getServers").text
    finally:
        lb.stop()
    log = lb.log()
    flows = []
    with open(capture, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    annotations = json.dumps([[f.metadata, f.comment, str(f.error)] for f in flows], default=str)
    for where, text in (("log", log), ("/api/servers", listing), ("getServers", get_servers),
                        ("flow annotations", annotations)):
        assert "checksum=" not in text, where
        for backend in broken:
            assert backend.spec["secret"] not in text, where
    # The failures are still described, only without the URL.
    assert "bad answer" in listing and "create of leak-0 on broken-garbage failed" in log
    assert "broken-garbage" in annotations
