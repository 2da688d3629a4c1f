"""Callbacks to integrations: their own pool and limits, and never towards the LB's machine or networks."""

from __future__ import annotations

import contextlib
import http.server as http_server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from lb_core.config import ConfigError, parse
from lb_core.config_sections import CallbacksConfig
from lb_core.outbound import OutboundClient, TargetPolicy, TargetRefused
from tests.conftest import LB, serving, wait_for

LOOPBACK = ["127.0.0.0/8"]
LOOPBACK_TUPLE = ("127.0.0.0/8",)
FAST_RETRIES = [0.1, 0.1, 0.1]


@dataclass
class Receiver:
    """The integration's callback endpoint; ``hang`` keeps requests waiting without an answer."""

    port: int
    calls: list[str] = field(default_factory=list)
    hang: bool = False
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(0)  # its port once bound

    class Handler(http_server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state.calls.append(self.path)
            if state.hang:
                state.release.wait(30)
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


def create(lb: LB, meeting_id: str, callback: str):  # type: ignore[no-untyped-def]
    return lb.call("create", {"meetingID": meeting_id, "name": "Room", "moderatorPW": "mp", "attendeePW": "ap",
                              "meta_endCallbackUrl": callback})


def end_from_inside(lb: LB, sim, meeting_id: str) -> None:  # type: ignore[no-untyped-def]
    """The meeting ends on its server (not through the LB): the server calls the LB's end callback."""
    lb.call("join", {"meetingID": meeting_id, "fullName": "Ann", "password": "mp"})
    server = next(s["name"] for s in sim.control("/servers") if meeting_id in s["meetings"])
    sim.control(f"/servers/{server}/meetings/{meeting_id}/end", {})


def creates_seen(sim) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for s in sim.servers for r in sim.requests(s["name"]) if r["call"] == "create")


def test_targets_inside_the_lb_are_refused_at_create(lb_factory, sim):
    lb = lb_factory()
    refused = [
        "http://127.0.0.1:8080/ended",  # loopback
        "http://localhost:8080/ended",  # a name is resolved and its addresses checked
        "http://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
        "http://10.1.2.3/ended", "http://192.168.0.10/ended", "http://[fd00::1]/ended",  # private
        "http://[::1]:8080/ended", "http://[::ffff:127.0.0.1]/ended",  # loopback in IPv6 clothes
        "http://0.0.0.0:8080/ended", "ftp://example.com/ended", "http://:80/",
    ]
    for n, url in enumerate(refused):
        reply = create(lb, f"refused-{n}", url)
        assert reply.field("returncode") == "FAILED", url
        assert reply.field("messageKey") == "invalidParameters", url
        assert "meta_endCallbackUrl is refused" in reply.field("message"), url
    assert creates_seen(sim) == 0  # refused before any backend heard of it
    # A public address is fine (delivery is only tried when the meeting ends).
    assert create(lb, "public", "http://93.184.216.34/ended").field("returncode") == "SUCCESS"


def test_allowed_networks_open_a_network_but_never_the_lbs_own_listeners(lb_factory, sim, receiver):
    lb = lb_factory(admin={"host": "127.0.0.1", "port": 0, "token": "a" * 24},
                    callbacks={"allowed_networks": LOOPBACK, "retry_delays_s": FAST_RETRIES})
    admin_port = lb.bound["admin"]
    for n, url in enumerate([f"{lb.url}/bigbluebutton/api/end", f"http://localhost:{lb.port}/",
                             f"http://127.0.0.1:{admin_port}/api/servers", f"http://127.0.0.2:{lb.port}/"]):
        reply = create(lb, f"own-{n}", url)
        assert reply.field("messageKey") == "invalidParameters", url
        assert "load balancer" in reply.field("message"), url
    assert create(lb, "allowed", receiver.url() + "/ended?x=1").field("returncode") == "SUCCESS"
    end_from_inside(lb, sim, "allowed")
    wait_for(lambda: receiver.calls, 10, what="the end callback")
    assert receiver.calls[0].startswith("/ended?x=1&meetingID=allowed")


def test_a_target_refused_at_delivery_is_dropped_and_logged(lb_factory, sim, receiver):
    lb = lb_factory(callbacks={"allowed_networks": LOOPBACK, "retry_delays_s": FAST_RETRIES})
    assert create(lb, "rebound", receiver.url("localhost") + "/ended?token=s3cr3t").field("returncode") == "SUCCESS"
    # The operator closes the network; the stored callback's name now resolves to a refused address.
    lb.config["callbacks"] = {"retry_delays_s": FAST_RETRIES}
    lb.restart()
    end_from_inside(lb, sim, "rebound")
    wait_for(lambda: "dropped" in lb.log(), 10, what="the refused delivery to be logged")
    line = next(x for x in lb.log().splitlines() if "dropped" in x)
    assert f"localhost:{receiver.port} is refused" in line and "s3cr3t" not in lb.log()
    assert receiver.calls == []  # the drop is decided before any connection is made


def test_a_hanging_integration_is_cut_by_the_callbacks_timeout_and_never_slows_the_api(lb_factory, sim,
                                                                                       receiver):
    receiver.hang = True
    lb = lb_factory(callbacks={"allowed_networks": LOOPBACK, "retry_delays_s": FAST_RETRIES, "timeout_s": 0.5,
                               "max_connections": 2})
    for n in range(4):
        assert create(lb, f"slow-{n}", receiver.url() + f"/ended/{n}").field("returncode") == "SUCCESS"
    for n in range(4):
        end_from_inside(lb, sim, f"slow-{n}")
    # Four deliveries hang on a pool of two connections: the API answers at once all the same.
    wait_for(lambda: receiver.calls, 10, what="a delivery attempt")
    started = time.monotonic()
    assert lb.call("getMeetings").field("returncode") == "SUCCESS"
    assert create(lb, "still-fast", "http://93.184.216.34/x").field("returncode") == "SUCCESS"
    assert time.monotonic() - started < 2
    # Each attempt is cut after callbacks.timeout_s (0.5 s), so four attempts end well within 10 s.
    wait_for(lambda: lb.log().count("given up") >= 4, 12, what="the deliveries to be given up")
    assert "(last: timed out)" in lb.log()


def test_allowed_networks_must_be_networks():
    with pytest.raises(ConfigError, match=r"callbacks.allowed_networks: 'not-a-network' is not an IP network"):
        parse({"secret": "s", "callbacks": {"allowed_networks": ["not-a-network"]}})
    config = parse({"secret": "s", "callbacks": {"allowed_networks": "10.0.0.0/8", "timeout_s": 2}})
    assert config.callbacks.allowed_networks == ("10.0.0.0/8",) and config.callbacks.timeout_s == 2


# --- the client itself, against local servers ----------------------------------------------------------------


class FixedAnswer(AbstractResolver):
    """A DNS that answers ``address`` for every name, as a rebinding attacker's would."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        return [{"hostname": host, "host": self.address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def client(allowed: tuple[str, ...] = (), address: str = "127.0.0.1", **limits: Any) -> OutboundClient:
    outbound = OutboundClient(CallbacksConfig(allowed_networks=allowed, **limits), {1}, "https://lb.example")
    outbound._resolver._inner = FixedAnswer(address)  # type: ignore[assignment]
    return outbound


async def test_the_connection_goes_to_the_address_that_was_checked(receiver):
    refused = client()
    try:
        with pytest.raises(TargetRefused, match="loopback"):
            await refused.send(f"http://rebind.example:{receiver.port}/ended")
    finally:
        await refused.close()
    assert receiver.calls == []  # refused before connecting
    allowed = client(LOOPBACK_TUPLE)
    try:  # the name exists nowhere but in the checked answer, and that is where the call lands
        assert await allowed.send(f"http://rebind.example:{receiver.port}/ended") == 200
    finally:
        await allowed.close()
    assert receiver.calls == ["/ended"]


async def test_a_huge_answer_is_not_read_past_max_response_bytes():
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"x" * 65536)
        return response

    app = web.Application()
    app.router.add_get("/", endless)
    async with serving(app) as port:
        outbound = client(LOOPBACK_TUPLE, timeout_s=5.0, max_response_bytes=1024)
        try:
            started = time.monotonic()
            assert await outbound.send(f"http://127.0.0.1:{port}/") == 200
            assert time.monotonic() - started < 2
        finally:
            await outbound.close()


def test_the_policy_in_short():
    policy = TargetPolicy(("10.0.0.0/8",), {8090}, "https://lb.example")
    policy.check_address("10.1.2.3", 80)  # allowed network
    policy.check_address("93.184.216.34", 8090)  # someone else's port 8090
    for address, port in (("127.0.0.1", 80), ("169.254.169.254", 80), ("172.16.0.1", 80), ("fe80::1", 80),
                          ("::ffff:192.168.1.1", 80), ("224.0.0.1", 80), ("100.64.0.1", 80)):
        with pytest.raises(TargetRefused):
            policy.check_address(address, port)
    with pytest.raises(TargetRefused, match="load balancer itself"):
        policy.check_origin("LB.example.", 443)
