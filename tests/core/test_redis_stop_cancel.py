"""A stop on the Redis store never hangs on a cancel that the Redis client dropped.

redis-py sends every command under ``asyncio.wait_for``; on Python 3.11 that loses a cancel landing as the
send completes (CPython gh-86296). A poll loop cancelled there went on polling, and ``LoadBalancer.stop``
waited for it forever: the rare SIGTERM hang of issue 12 (an instance that had just become the poller was
stopped while its first rounds wrote to Redis). On a real redis-server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lb_core.service import LoadBalancer
from lb_core.store_redis import RedisStore
from tests.conftest import RedisServer
from tests.core.conftest import Sim, lb_config_for


async def test_a_task_cancelled_during_redis_calls_always_ends(redis_server: RedisServer, redis_prefix: str) -> None:
    """Cancels landing at every step of a command (send, drain, reply) across many commands."""
    store = RedisStore(redis_server.url, redis_prefix)
    await store.open()
    try:
        async def calling_forever() -> None:
            while True:
                await store._call(store.redis.set(store.key("probe"), "x"))

        went_on = 0
        for attempt in range(300):
            task = asyncio.create_task(calling_forever())
            for _ in range(attempt % 30):  # land the cancel at a different point of the round trip each time
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            if not done:
                went_on += 1
                task.cancel()  # once more, so it does end
                await asyncio.wait({task}, timeout=2)
        assert went_on == 0, f"{went_on} of 300 cancelled tasks went on calling Redis"
    finally:
        await store.close()


async def test_an_lb_becoming_the_poller_as_it_stops_still_stops(tmp_path: Path, sim: Sim, redis_server: RedisServer,
                                                                redis_prefix: str) -> None:
    """The lease gained as SIGTERM comes: a round starts at once (``poll_soon``) and writes the pool, the
    placed sets and the voice bridges to Redis while the stop cancels it."""
    for attempt in range(12):
        prefix = f"{redis_prefix}-{attempt}"
        config = lb_config_for(tmp_path, sim.servers, store={"backend": "redis", "url": redis_server.url,
                                                             "prefix": prefix})
        lb = await LoadBalancer.start(config, RedisStore(redis_server.url, prefix), poll=True)
        assert lb.monitor is not None and lb.cluster is not None
        await asyncio.wait_for(_until_leader(lb), 10)
        lb.monitor.poll_soon()
        for _ in range(attempt):
            await asyncio.sleep(0)
        stopping = asyncio.create_task(lb.stop())
        done, _ = await asyncio.wait({stopping}, timeout=10)
        assert done, f"attempt {attempt}: the stop still waits after 10 s"
        stopping.result()


async def _until_leader(lb: LoadBalancer) -> None:
    assert lb.cluster is not None
    while not lb.cluster.leader:
        await asyncio.sleep(0.02)
