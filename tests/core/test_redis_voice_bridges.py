"""Voice bridges in use on the Redis store follow reality: what the poller saw on a server, what the LB's
own live meetings there hold and the claims of creates still under way; nothing else stays forever.

In process, on a real redis-server: the poller's round (``SharedPoller.round``) is driven by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from lb_core import checksum
from lb_core import cluster as cluster_module
from lb_core.cluster import Cluster
from lb_core.shared_poller import SharedPoller
from lb_core.store_redis import RedisStore
from tests.conftest import RedisServer
from tests.core.conftest import CoreLB, Sim, lb_config_for


class Polling:
    """A CoreLB on Redis that is the poller, and its poller's round."""

    def __init__(self, lb: CoreLB) -> None:
        assert lb.lb is not None and lb.lb.cluster is not None and lb.lb.monitor is not None
        self.lb = lb
        self.cluster: Cluster = lb.lb.cluster
        self.poller = SharedPoller(self.cluster, lb.lb.monitor, lb.lb.pool, lb.config, lb.lb.status)

    async def round(self) -> None:
        assert await self.cluster.hold_lease()
        await self.poller.round()

    async def bridges(self, server: str) -> set[str]:
        return await self.cluster.voice_bridges(server)


@pytest.fixture
async def polling(tmp_path: Path, sim: Sim, redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[Polling]:
    config = lb_config_for(tmp_path, sim.servers[:2],
                           store={"backend": "redis", "url": redis_server.url, "prefix": redis_prefix})
    lb = await CoreLB(config, lambda: RedisStore(redis_server.url, redis_prefix)).start()
    try:
        yield Polling(lb)
    finally:
        await lb.stop()


async def create_outside_the_lb(lb: CoreLB, sim: Sim, server: str, meeting_id: str, bridge: str) -> None:
    """A meeting created on the server directly (another front end, an operator): the LB never sees its create."""
    spec = next(s for s in sim.servers if s["name"] == server)
    query = urlencode({"meetingID": meeting_id, "name": meeting_id, "voiceBridge": bridge})
    reply = await lb.fetch(f"{spec['url']}api/create?{checksum.sign('create', query, spec['secret'], 'sha1')}")
    assert b"<returncode>SUCCESS</returncode>" in reply.body, reply.body


async def test_a_bridge_seen_in_use_outside_the_lb_is_freed_by_the_poll_after_its_meeting_ends(
        polling: Polling, sim: Sim) -> None:
    await create_outside_the_lb(polling.lb, sim, "bbb1", "outside", "12345")
    await polling.round()
    assert "12345" in await polling.bridges("bbb1")  # nobody is given it while that meeting runs
    await sim.end("bbb1", "outside")
    await polling.round()
    assert "12345" not in await polling.bridges("bbb1")


async def test_the_lbs_own_meeting_keeps_its_bridge_and_a_dead_claim_is_freed_after_its_grace(
        polling: Polling, sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    reply = await polling.lb.call("create", {"meetingID": "ours", "name": "ours", "voiceBridge": "71111"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    server = sim.server_of("ours")
    # A create on another process claimed 72222 a moment ago; its server has not answered yet, so the poll
    # that follows does not show it.
    assert await polling.cluster.claim_voice_bridge(server, "72222")
    await polling.round()
    assert {"71111", "72222"} <= await polling.bridges(server)
    assert not await polling.cluster.claim_voice_bridge(server, "72222")  # still that create's
    # That create never finished (its process died): once the grace is over, the next poll frees it. The
    # LB's own meeting keeps its bridge, even where a listing does not show it.
    monkeypatch.setattr(cluster_module, "VOICE_CLAIM_GRACE_S", 0.0, raising=False)
    monkeypatch.setattr(polling.lb.lb.pool.get(server), "voice_bridges", set())  # type: ignore[union-attr]
    await polling.round()
    assert "72222" not in await polling.bridges(server)
    assert "71111" in await polling.bridges(server)


async def test_claims_made_while_the_poller_prunes_are_never_lost(polling: Polling, sim: Sim) -> None:
    """The prune is one script: a claim lands before it (and is recent) or after it, never in between."""
    claimed: list[str] = []

    async def claim_many() -> None:
        for i in range(300):
            bridge = str(73000 + i)
            assert await polling.cluster.claim_voice_bridge("bbb1", bridge)
            claimed.append(bridge)

    async def prune_many() -> None:
        while len(claimed) < 300:
            await polling.cluster.note_voice_bridges("bbb1", set())
            await asyncio.sleep(0)

    await asyncio.gather(claim_many(), prune_many())
    assert await polling.bridges("bbb1") >= set(claimed)


async def test_a_removed_servers_bridges_go(polling: Polling, sim: Sim, redis_server: RedisServer,
                                            redis_prefix: str) -> None:
    await create_outside_the_lb(polling.lb, sim, "bbb2", "outside-2", "23456")
    reply = await polling.lb.call("create", {"meetingID": "ours-2", "name": "ours-2", "voiceBridge": "74444",
                                             "preferredServer": "bbb2"})
    assert reply.field("returncode") == "SUCCESS", reply.text
    await polling.round()
    on_bbb2 = await polling.bridges("bbb2")
    assert "23456" in on_bbb2
    assert polling.lb.lb is not None and polling.lb.lb.server_controls is not None
    await polling.lb.lb.server_controls.remove_server("bbb2")
    await polling.round()
    assert await polling.bridges("bbb2") == set()
    client = redis_server.client()
    assert not client.exists(f"{redis_prefix}:voice:bbb2", f"{redis_prefix}:bridges:bbb2")
    assert "bbb2" not in client.smembers(f"{redis_prefix}:voice-servers")
