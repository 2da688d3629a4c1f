"""The server pool end to end: outages, bursts, weights, failover, limits, ended meetings."""

from __future__ import annotations

import concurrent.futures
import statistics
import time
from collections import Counter

import pytest

from tests.conftest import wait_for
from tests.e2e.test_gateway import server_of


def create(lb, meeting_id: str, **params: str):  # type: ignore[no-untyped-def]
    return lb.call("create", {"meetingID": meeting_id, "name": f"Room {meeting_id}", "moderatorPW": "mp",
                              **params}, timeout=20)


def status_of(lb, name: str) -> str:
    for node in lb.call("getServers").xml().iterfind("servers/server"):
        if node.findtext("name") == name:
            return node.findtext("status") + "/" + node.findtext("isDisabled")
    raise AssertionError(name)


@pytest.mark.parametrize(("fault", "status"), [("refuse", "4"), ("503", "3"), ("hang", "4")])
def test_an_outage_moves_new_meetings_elsewhere_within_the_hysteresis(lb_factory, sim, fault, status):
    lb = lb_factory(servers=[0, 1, 2], monitor={"interval_s": 0.5, "timeout_s": 0.5, "down_after": 2,
                                                "up_after": 2})
    wait_for(lambda: status_of(lb, "bbb1") == "2/false", 5, what="bbb1 up")
    sim.fault("bbb1", fault)
    try:
        # Even before the poller notices, a new meeting whose first choice fails goes to the next server.
        for i in range(3):
            assert create(lb, f"early-{fault}-{i}").field("returncode") == "SUCCESS"
            assert server_of(sim, f"early-{fault}-{i}") != "bbb1"
        # Two failed polls (0.5 s apart, 0.5 s timeout) later the server is out of the pool.
        wait_for(lambda: status_of(lb, "bbb1") == f"{status}/true", 4, what=f"bbb1 status {status}")
        for i in range(6):
            assert create(lb, f"late-{fault}-{i}").field("returncode") == "SUCCESS"
            assert server_of(sim, f"late-{fault}-{i}") != "bbb1"
        # Log lines are written in batches, at most half a second apart.
        wait_for(lambda: "placed meeting late-" in lb.log() and "(status " in lb.log(), 3, what="the decision log")
    finally:
        sim.fault("bbb1", "ok")
    wait_for(lambda: status_of(lb, "bbb1") == "2/false", 5, what="bbb1 up again")


def test_a_burst_of_200_creates_spreads_over_5_servers(lb_factory, sim):
    lb = lb_factory(monitor={"interval_s": 30, "timeout_s": 2})
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda i: create(lb, f"burst-{i}"), range(200)))
    assert all(r.field("returncode") == "SUCCESS" for r in replies)
    per_server = Counter({s["name"]: len(s["meetings"]) for s in sim.control("/servers")})
    mean = statistics.mean(per_server.values())
    print(f"burst spread over 5 servers: {dict(per_server)} (mean {mean}, max {max(per_server.values())})")
    assert sum(per_server.values()) == 200
    assert max(per_server.values()) <= 2 * mean
    assert max(per_server.values()) - min(per_server.values()) <= 2


def test_weights_are_honoured(lb_factory, sim):
    servers = [dict(s) for s in sim.servers[:3]]
    servers[0]["weight"] = 3
    lb = lb_factory(servers=[0, 1, 2], monitor={"interval_s": 30, "timeout_s": 2})
    lb.config["servers"] = servers
    lb.restart()
    for i in range(50):
        assert create(lb, f"w-{i}").field("returncode") == "SUCCESS"
    per_server = {s["name"]: len(s["meetings"]) for s in sim.control("/servers")}
    assert per_server["bbb1"] == 30 and per_server["bbb2"] == per_server["bbb3"] == 10, per_server


def test_a_dead_servers_meeting_is_created_anew_elsewhere(lb_factory, sim):
    lb = lb_factory(servers=[0, 1], monitor={"interval_s": 0.5, "timeout_s": 0.5})
    create(lb, "phoenix", preferredServer="bbb1")
    assert server_of(sim, "phoenix") == "bbb1"
    sim.fault("bbb1", "refuse")
    try:
        wait_for(lambda: status_of(lb, "bbb1").startswith("4/"), 4, what="bbb1 unreachable")
        join = lb.call("join", {"meetingID": "phoenix", "fullName": "A", "password": "mp"})
        assert join.field("messageKey") == "serverUnavailable"
        again = create(lb, "phoenix")
        assert again.field("returncode") == "SUCCESS" and again.field("messageKey") != "duplicateWarning"
        assert "phoenix" in sim.meetings("bbb2")
        join = lb.call("join", {"meetingID": "phoenix", "fullName": "A", "password": "mp"})
        assert join.status == 302 and join.headers["Location"].startswith(sim.servers[1]["url"])
    finally:
        sim.fault("bbb1", "ok")


def test_server_limits_take_a_full_server_out(lb_factory, sim):
    servers = [dict(s) for s in sim.servers[:2]]
    servers[0]["max_meetings"] = 2
    lb = lb_factory(servers=[0, 1], monitor={"interval_s": 30, "timeout_s": 2})
    lb.config["servers"] = servers
    lb.restart()
    for i in range(6):
        create(lb, f"cap-{i}")
    assert len(sim.meetings("bbb1")) == 2 and len(sim.meetings("bbb2")) == 4
    assert status_of(lb, "bbb1") == "2/true"  # automatic mode: over its limit, it is disabled


def test_the_poller_learns_meetings_that_ended(lb_factory, sim):
    lb = lb_factory(servers=[0], monitor={"interval_s": 0.3, "timeout_s": 1})
    create(lb, "quiet-end")
    lb.call("join", {"meetingID": "quiet-end", "fullName": "A", "password": "mp"})
    sim.control("/servers/bbb1/meetings/quiet-end/end", {})  # no callback configured: only the poller can tell

    def ended() -> bool:
        event = lb.call("getMeetingEvents").xml().find("events/event")
        return event is not None and bool(event.findtext("endedAt"))

    wait_for(ended, 5, what="the end to be learned")
    assert lb.call("getMeetingInfo", {"meetingID": "quiet-end"}).field("messageKey") == "notFound"


def test_participants_count_in_the_load(lb_factory, sim):
    lb = lb_factory(servers=[0, 1], monitor={"interval_s": 0.3, "timeout_s": 1},
                    balancer={"meeting_size": 0, "warmup_s": 0})
    create(lb, "crowd", preferredServer="bbb1")
    sim.control("/servers/bbb1/meetings/crowd/participants", {"participants": 50, "voice": 10, "video": 5})
    create(lb, "small", preferredServer="bbb2")
    sim.control("/servers/bbb2/meetings/small/participants", {"participants": 5})

    def polled() -> bool:
        servers = {n.findtext("name"): n for n in lb.call("getMeetings").xml().iterfind("meetings/meeting/server")}
        return len(servers) == 2

    wait_for(polled, 3, what="both meetings listed")
    time.sleep(1.0)  # a few polls, so the participant counts are known
    for i in range(5):
        create(lb, f"next-{i}")
    assert len(sim.meetings("bbb2")) == 6 and len(sim.meetings("bbb1")) == 1
