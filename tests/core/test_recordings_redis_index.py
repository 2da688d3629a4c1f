"""Two LoadBalancers on one real redis-server, in process: each one's recording lookups follow the other's
writes through change notices, the sync and the retention purge (done by the poller alone) included."""

from __future__ import annotations

import time
from pathlib import Path

from lb_core.recording_index import DAY_MS
from lb_core.store_redis import RedisStore
from tests.conftest import RedisServer
from tests.core.conftest import CoreLB, Sim, lb_config_for, until


def on_redis(tmp_path: Path, sim: Sim, redis_server: RedisServer, prefix: str):  # type: ignore[no-untyped-def]
    """A config whose processes share one Redis prefix."""
    return lb_config_for(tmp_path, sim.servers[:2], store={"backend": "redis", "url": redis_server.url, "prefix": prefix})


def redis_store(redis_server: RedisServer, prefix: str):  # type: ignore[no-untyped-def]
    return lambda: RedisStore(redis_server.url, prefix)


def ids(reply) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.findtext("recordID") for r in reply.xml().iterfind("recordings/recording")]


async def test_the_sync_and_the_purge_of_one_process_reach_the_other(tmp_path: Path, sim: Sim,
                                                                     redis_server: RedisServer,
                                                                     redis_prefix: str) -> None:
    config = on_redis(tmp_path, sim, redis_server, redis_prefix)
    a = await CoreLB(config, redis_store(redis_server, redis_prefix)).start()
    b = await CoreLB(config, redis_store(redis_server, redis_prefix)).start()
    try:
        sim.add_recording("bbb1", "room", "rec-synced")
        await a.lb.recording_sync.sync_all()  # a is the one that reads the servers
        await until(lambda: b.lb.recordings.index.get("rec-synced") is not None, timeout=5, what="b to learn it")
        assert ids(await b.call("getRecordings", {"recordID": "rec-syn"})) == ["rec-synced"]
        assert (await b.call("deleteRecordings", {"recordID": "rec-synced"})).field("deleted") == "true"
        await until(lambda: (a.lb.recordings.index.get("rec-synced") or {}).get("state") == "deleted", timeout=5,
                    what="a to see b's delete")
        assert ids(await a.call("getRecordings")) == []
        purged = await a.lb.recordings.index.purge(now=int(time.time() * 1000) + 31 * DAY_MS)
        assert [d["record_id"] for d in purged] == ["rec-synced"]
        await until(lambda: b.lb.recordings.index.get("rec-synced") is None, timeout=5, what="b to drop it")
        assert ids(await b.call("getRecordings", {"state": "deleted"})) == []
        assert b.lb.recordings.index.counts()["deleted"] == 0
    finally:
        await a.stop()
        await b.stop()


async def test_a_process_that_missed_notices_reads_the_whole_index_again(tmp_path: Path, sim: Sim,
                                                                          redis_server: RedisServer,
                                                                          redis_prefix: str) -> None:
    """Notices sent while a process was cut off from Redis are lost: on resubscribing (``all``) it reloads."""
    config = on_redis(tmp_path, sim, redis_server, redis_prefix)
    a = await CoreLB(config, redis_store(redis_server, redis_prefix)).start()
    try:
        index = a.lb.recordings.index
        await a.lb.store.put("recordings", "rec-quiet", {"record_id": "rec-quiet", "integration": "default",
                                                        "meeting_id": "room", "state": "published", "metadata": {}})
        assert index.get("rec-quiet") is None  # written with no notice
        await a.lb.relay.changed("all", "")
        assert index.get("rec-quiet") is not None
        assert ids(await a.call("getRecordings", {"recordID": "rec-q"})) == ["rec-quiet"]
    finally:
        await a.stop()
