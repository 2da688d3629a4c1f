"""A LoadBalancer on the Redis store: moved there and back with its whole state, and calm when Redis fails.

In process (``tests/core/conftest.py``): the gateway is called directly, the BBB servers are simulated,
Redis is a real redis-server.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from lb_core import config as lb_config
from lb_core.migrate import MigrationError, copy_state
from lb_core.store import Store
from lb_core.store_redis import RedisStore
from lb_core.store_tinydb import TinyDbStore
from tests.conftest import RedisServer
from tests.core.conftest import CoreLB, Sim, lb_config_for, until

MOODLE_SECRET = "moodle-secret-1"


def redis_config(tmp_path: Path, sim: Sim, server: RedisServer, prefix: str, **store: Any) -> lb_config.Config:
    return lb_config_for(tmp_path, sim.servers[:2],
                         store={"backend": "redis", "url": server.url, "prefix": prefix, **store})


async def started(config: lb_config.Config, make: Any) -> CoreLB:
    return await CoreLB(config, make).start()


async def create(lb: CoreLB, meeting_id: str, secret: str | None = None, **params: str) -> Any:
    reply = await lb.call("create", {"meetingID": meeting_id, "name": meeting_id, "moderatorPW": "mp",
                                     "attendeePW": "ap", **params}, secret=secret)
    assert reply.field("returncode") == "SUCCESS", reply.text
    return reply


async def joined_server(lb: CoreLB, sim: Sim, meeting_id: str, secret: str | None = None) -> str:
    """The simulated server a join of ``meeting_id`` is sent to."""
    reply = await lb.call("join", {"meetingID": meeting_id, "fullName": "Ann", "password": "mp"}, secret=secret)
    assert reply.status == 302, reply.text
    location = reply.headers["Location"]
    return next(s["name"] for s in sim.servers if location.startswith(s["url"].split("/bigbluebutton")[0]))


async def event_ids(lb: CoreLB) -> list[str]:
    reply = await lb.call("getMeetingEvents", [("users", "0")])
    assert reply.field("returncode") == "SUCCESS", reply.text
    return sorted(e.findtext("meetingID") or "" for e in reply.xml().findall("events/event"))


async def snapshot(store: Store) -> dict[str, Any]:
    tables = {t: await store.all(t) for t in await store.tables()}
    events = {p: await store.read_events(p) for p in await store.event_partitions()}
    return {"tables": tables, "events": events}


async def test_tinydb_to_redis_and_back_keeps_every_meeting_server_integration_and_event(
        tmp_path: Path, sim: Sim, redis_server: RedisServer, redis_prefix: str) -> None:
    tiny_config = lb_config_for(tmp_path, sim.servers[:2])
    lb = await started(tiny_config, lambda: TinyDbStore(tiny_config.store_path))
    await lb.lb.server_controls.add_server(dict(sim.servers[2]))
    await lb.lb.integration_controls.put_integration({"name": "moodle", "secret": MOODLE_SECRET})
    await lb.poll()
    for i in range(6):
        await create(lb, f"m{i}", meta_endCallbackUrl="https://moodle.example/end")
    await create(lb, "moodle-1", secret=MOODLE_SECRET)
    await lb.call("end", {"meetingID": "m5", "password": "mp"})
    where = {f"m{i}": await joined_server(lb, sim, f"m{i}") for i in range(5)}
    where["moodle-1"] = await joined_server(lb, sim, "moodle-1", MOODLE_SECRET)
    events = await event_ids(lb)
    await lb.stop()

    source = TinyDbStore(tiny_config.store_path)
    target = RedisStore(redis_server.url, redis_prefix)
    await source.open()
    await target.open()
    copied = await copy_state(source, target)
    assert copied.documents["meetings"] == 6 and copied.documents["callbacks"] >= 5 and copied.events > 0
    before = await snapshot(source)
    assert await snapshot(target) == before
    with pytest.raises(MigrationError, match="already holds data"):
        await copy_state(source, target)  # a second copy would repeat the events
    await source.close()
    await target.close()

    on_redis = redis_config(tmp_path, sim, redis_server, redis_prefix)
    lb = await started(on_redis, lambda: RedisStore(redis_server.url, redis_prefix))
    assert {s.name for s in lb.lb.pool} == {"bbb1", "bbb2", "bbb3"}
    assert {m: await joined_server(lb, sim, m, MOODLE_SECRET if m.startswith("moodle") else None)
            for m in where} == where
    assert await event_ids(lb) == events
    await lb.stop()

    back = RedisStore(redis_server.url, redis_prefix)
    tiny_again = TinyDbStore(str(tmp_path / "again.json"))
    await back.open()
    await tiny_again.open()
    await copy_state(back, tiny_again)
    assert await snapshot(tiny_again) == await snapshot(back)
    await back.close()
    await tiny_again.close()


async def test_calls_fail_promptly_while_redis_is_down_and_everything_resumes_after(
        tmp_path: Path, sim: Sim, own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    config = redis_config(tmp_path, sim, own_redis, "lb", timeout_s=0.5)
    lb = await started(config, lambda: RedisStore(own_redis.url, "lb", timeout_s=0.5))
    try:
        for i in range(4):
            await create(lb, f"before-{i}")
        where = {f"before-{i}": await joined_server(lb, sim, f"before-{i}") for i in range(4)}
        own_redis.stop()

        started_at = time.monotonic()
        reply = await lb.call("create", {"meetingID": "during", "name": "during"})
        assert time.monotonic() - started_at < 2.0
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "internalError"), reply.text
        assert "Traceback" not in reply.text and "redis" not in reply.text.lower()
        store_lines = [r for r in caplog.records if "not available" in r.getMessage()]
        assert store_lines and not any(r.exc_info for r in store_lines)  # one line each, no traceback
        for meeting_id in where:  # every call is answered at once, by its server or with a FAILED
            started_at = time.monotonic()
            reply = await lb.call("join", {"meetingID": meeting_id, "fullName": "Bo", "password": "ap"})
            assert time.monotonic() - started_at < 2.0
            assert reply.status == 302 or reply.field("returncode") == "FAILED", reply.text

        await asyncio.to_thread(own_redis.start)
        await until(lambda: _store_ok(lb), what="the store answering again")
        await create(lb, "after")
        assert {m: await joined_server(lb, sim, m) for m in where} == where  # no mapping lost
        assert sorted(await lb.lb.store.all("meetings")) == sorted(f"default {m}" for m in [*where, "after"])
    finally:
        await lb.stop()


async def _store_ok(lb: CoreLB) -> bool:
    return await lb.lb.store.problem() is None


async def test_a_slow_redis_makes_calls_fail_within_the_store_timeout(
        tmp_path: Path, sim: Sim, own_redis: RedisServer) -> None:
    config = redis_config(tmp_path, sim, own_redis, "lb", timeout_s=0.3)
    lb = await started(config, lambda: RedisStore(own_redis.url, "lb", timeout_s=0.3))
    sleeper = await asyncio.to_thread(own_redis.sleep_in_background, 2)
    try:
        started_at = time.monotonic()
        reply = await lb.call("create", {"meetingID": "slow", "name": "slow"})
        took = time.monotonic() - started_at
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "internalError"), reply.text
        assert took < 0.3 * 2 + 0.4, took  # the store's timeout, not Redis's 2 s sleep
    finally:
        await asyncio.to_thread(sleeper.join)
        await lb.stop()
