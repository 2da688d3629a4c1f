"""The server pool in process: outages, bursts, weights, failover, limits, ended meetings.

Polls run when the test says so (``await lb.poll()``): the hysteresis is checked poll by poll.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import Counter

import pytest

from tests.core.conftest import until


async def create(lb, meeting_id: str, **params: str):  # type: ignore[no-untyped-def]
    return await lb.call("create", {"meetingID": meeting_id, "name": f"Room {meeting_id}", "moderatorPW": "mp",
                                    **params})


async def status_of(lb, name: str) -> str:
    for node in (await lb.call("getServers")).xml().iterfind("servers/server"):
        if node.findtext("name") == name:
            return node.findtext("status") + "/" + node.findtext("isDisabled")
    raise AssertionError(name)


@pytest.mark.parametrize(("fault", "status"), [("refuse", "4"), ("503", "3"), ("hang", "4")])
async def test_an_outage_moves_new_meetings_elsewhere_within_the_hysteresis(lb_factory, sim, caplog, fault, status):
    caplog.set_level(logging.INFO, logger="bbb_lb")
    # A create that hangs on its first choice gives up after backend.timeout_s, then tries the next server.
    lb = await lb_factory(servers=[0, 1, 2], monitor={"interval_s": 0.5, "timeout_s": 0.5, "down_after": 2,
                                                      "up_after": 2}, backend={"timeout_s": 1.0})
    assert await status_of(lb, "bbb1") == "2/false"
    await sim.fault("bbb1", fault)
    # Even before the poller notices, a new meeting whose first choice fails goes to the next server.
    for i in range(3):
        assert (await create(lb, f"early-{fault}-{i}")).field("returncode") == "SUCCESS"
        assert sim.server_of(f"early-{fault}-{i}") != "bbb1"
    # One failed poll is not enough to take it out; the second is.
    await lb.poll()
    assert await status_of(lb, "bbb1") == "2/false"
    await lb.poll()
    assert await status_of(lb, "bbb1") == f"{status}/true"
    for i in range(6):
        assert (await create(lb, f"late-{fault}-{i}")).field("returncode") == "SUCCESS"
        assert sim.server_of(f"late-{fault}-{i}") != "bbb1"
    assert "placed meeting late-" in caplog.text and "(status " in caplog.text
    # Back after up_after good polls.
    await sim.fault("bbb1", "ok")
    await lb.poll()
    assert await status_of(lb, "bbb1") == f"{status}/true"
    await lb.poll()
    assert await status_of(lb, "bbb1") == "2/false"


async def test_a_burst_of_200_creates_spreads_over_5_servers(lb_factory, sim):
    lb = await lb_factory(monitor={"interval_s": 30, "timeout_s": 2})
    replies = await asyncio.gather(*(create(lb, f"burst-{i}") for i in range(200)))
    assert all(r.field("returncode") == "SUCCESS" for r in replies)
    per_server = Counter({s["name"]: len(sim.meetings(s["name"])) for s in sim.servers})
    mean = statistics.mean(per_server.values())
    assert sum(per_server.values()) == 200
    assert max(per_server.values()) <= 2 * mean
    assert max(per_server.values()) - min(per_server.values()) <= 2


async def test_weights_are_honoured(lb_factory, sim):
    servers = [dict(s) for s in sim.servers[:3]]
    servers[0]["weight"] = 3
    lb = await lb_factory(servers=servers, monitor={"interval_s": 30, "timeout_s": 2})
    for i in range(50):
        assert (await create(lb, f"w-{i}")).field("returncode") == "SUCCESS"
    per_server = {s["name"]: len(sim.meetings(s["name"])) for s in sim.servers}
    assert per_server["bbb1"] == 30 and per_server["bbb2"] == per_server["bbb3"] == 10, per_server


async def test_a_dead_servers_meeting_is_created_anew_elsewhere(lb_factory, sim):
    lb = await lb_factory(servers=[0, 1], monitor={"interval_s": 0.5, "timeout_s": 0.5})
    await create(lb, "phoenix", preferredServer="bbb1")
    assert sim.server_of("phoenix") == "bbb1"
    await sim.fault("bbb1", "refuse")
    await lb.poll(2)
    assert (await status_of(lb, "bbb1")).startswith("4/")
    join = await lb.call("join", {"meetingID": "phoenix", "fullName": "A", "password": "mp"})
    assert join.field("messageKey") == "serverUnavailable"
    again = await create(lb, "phoenix")
    assert again.field("returncode") == "SUCCESS" and again.field("messageKey") != "duplicateWarning"
    assert "phoenix" in sim.meetings("bbb2")
    join = await lb.call("join", {"meetingID": "phoenix", "fullName": "A", "password": "mp"})
    assert join.status == 302 and join.headers["Location"].startswith(sim.servers[1]["url"])


async def test_server_limits_take_a_full_server_out(lb_factory, sim):
    servers = [dict(s) for s in sim.servers[:2]]
    servers[0]["max_meetings"] = 2
    lb = await lb_factory(servers=servers, monitor={"interval_s": 30, "timeout_s": 2})
    for i in range(6):
        await create(lb, f"cap-{i}")
    assert len(sim.meetings("bbb1")) == 2 and len(sim.meetings("bbb2")) == 4
    assert await status_of(lb, "bbb1") == "2/true"  # automatic mode: over its limit, it is disabled


async def test_the_poller_learns_meetings_that_ended(lb_factory, sim):
    lb = await lb_factory(servers=[0], monitor={"interval_s": 0.3, "timeout_s": 1})
    await create(lb, "quiet-end")
    await lb.call("join", {"meetingID": "quiet-end", "fullName": "A", "password": "mp"})
    await sim.end("bbb1", "quiet-end")  # no callback configured: only the poller can tell

    async def end_recorded() -> bool:
        # A poll that starts in the millisecond of the create (the background poller runs too) leaves the
        # meeting to a later one: poll until one has seen it gone.
        await lb.poll()
        event = (await lb.call("getMeetingEvents")).xml().find("events/event")
        return event is not None and bool(event.findtext("endedAt"))

    await until(end_recorded, timeout=10, what="the poller to record the end")
    assert (await lb.call("getMeetingInfo", {"meetingID": "quiet-end"})).field("messageKey") == "notFound"


async def test_participants_count_in_the_load(lb_factory, sim):
    lb = await lb_factory(servers=[0, 1], monitor={"interval_s": 0.3, "timeout_s": 1},
                          balancer={"meeting_size": 0, "warmup_s": 0})
    await create(lb, "crowd", preferredServer="bbb1")
    sim.participants("bbb1", "crowd", 50, voice=10, video=5)
    await create(lb, "small", preferredServer="bbb2")
    sim.participants("bbb2", "small", 5)
    await lb.poll()  # the participant counts are known from here on
    servers = {n.findtext("name") for n in (await lb.call("getMeetings")).xml().iterfind("meetings/meeting/server")}
    assert len(servers) == 2
    for i in range(5):
        await create(lb, f"next-{i}")
    assert len(sim.meetings("bbb2")) == 6 and len(sim.meetings("bbb1")) == 1
