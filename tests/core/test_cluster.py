"""What several bbb-lb processes share beyond the tables, on a real redis-server: lease, placement, locks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from lb_core import cluster as cluster_module
from lb_core.cluster import Cluster
from lb_core.config_sections import ServerConfig
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.pool import Server
from lb_core.store_redis import RedisStore
from tests.conftest import RedisServer


@pytest.fixture
async def two(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[tuple[Cluster, Cluster]]:
    """Two processes' views of one Redis: two clients, two node ids."""
    stores = [RedisStore(redis_server.url, redis_prefix) for _ in range(2)]
    for store in stores:
        await store.open()
    yield Cluster(stores[0], "node-a"), Cluster(stores[1], "node-b")
    for store in stores:
        await store.close()


def servers(count: int) -> list[Server]:
    return [Server(ServerConfig(name=f"bbb{i}", url=f"http://127.0.0.1:{9000 + i}/bigbluebutton/", secret="s"))
            for i in range(count)]


async def test_creates_placed_at_once_by_two_processes_count_each_other(two: tuple[Cluster, Cluster]) -> None:
    """Both see five idle servers; each alone would put its first create on bbb0. Counted together in one
    step, 100 creates from two processes at once end 20 per server."""
    pool = servers(5)
    candidates = [(s, 0.0) for s in pool]

    async def place(cluster: Cluster, i: int) -> str:
        return (await cluster.claim(candidates, f"m-{cluster.node_id}-{i}", 16.0)).name

    chosen = await asyncio.gather(*(place(two[i % 2], i) for i in range(100)))
    assert Counter(chosen) == {s.name: 20 for s in pool}
    assert await two[0].placed_counts([s.name for s in pool]) == {s.name: 20 for s in pool}


async def test_a_create_seen_by_a_poll_stops_counting(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    [one, other] = servers(2)
    assert (await a.claim([(one, 0.0), (other, 0.0)], "room", 16.0)) is one
    assert (await b.claim([(one, 0.0), (other, 0.0)], "room-2", 16.0)) is other
    await a.unplace(one.name, ["room"])  # the poll now counts it in the server's real load
    assert await b.placed_counts([one.name, other.name]) == {one.name: 0, other.name: 1}


async def test_one_process_holds_the_poller_lease_and_another_takes_it_when_it_lapses(
        two: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_module, "LEASE_S", 0.3)
    a, b = two
    assert await a.hold_lease() is True
    assert await b.hold_lease() is False
    assert await a.hold_lease() is True  # renewed by its holder, never taken over while renewed
    assert await b.poller() == "node-a"
    deadline = time.monotonic() + 5
    while not await b.hold_lease():  # a stops renewing (as a killed process does)
        assert time.monotonic() < deadline, "the lease never lapsed"
        await asyncio.sleep(0.05)
    assert await a.hold_lease() is False and a.leader is False
    assert await b.poller() == "node-b"


async def test_the_create_lock_of_a_meeting_holds_off_another_process(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    order: list[str] = []

    async def create(cluster: Cluster, name: str) -> None:
        async with cluster.create_lock("default room", 5):
            order.append(f"{name} in")
            await asyncio.sleep(0.1)
            order.append(f"{name} out")

    await asyncio.gather(create(a, "a"), create(b, "b"))
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


async def test_heartbeats_list_every_live_process(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    await a.beat({"meetings": 1})
    await b.beat({"meetings": 2})
    assert [(n["node"], n["meetings"]) for n in await a.nodes()] == [("node-a", 1), ("node-b", 2)]
    await b.leave()
    assert [n["node"] for n in await a.nodes()] == ["node-a"]


async def test_a_meeting_ended_elsewhere_is_not_routed_even_without_its_notice(two: tuple[Cluster, Cluster]) -> None:
    """The store is read on every meeting call: a lost change notice never leaves a stale route."""
    a, b = two
    mine, theirs = MeetingRegistry(a.store), MeetingRegistry(b.store)
    for registry, cluster in ((mine, a), (theirs, b)):
        registry.share(cluster, lambda key: asyncio.sleep(0))  # notices sent nowhere
    await theirs.save(MeetingRecord("default", "room", "bbb1", 1))
    assert mine.get("default", "room") is None
    assert (await mine.refresh("default", "room")) is not None and mine.get("default", "room") is not None
    await theirs.forget(MeetingRecord("default", "room", "bbb1", 1))
    assert await mine.refresh("default", "room") is None
    assert mine.get("default", "room") is None and mine.on_server("bbb1") == []


class RecordingOutbound:
    """An integration that never answers (every attempt fails), recording who tried."""

    def __init__(self, name: str, tried: list[str]) -> None:
        self.name, self.tried = name, tried

    async def send(self, url: str, **_: object) -> int:
        self.tried.append(self.name)
        return 503

    async def close(self) -> None:
        pass


async def test_a_callback_delivery_is_tried_by_one_process_and_adopted_when_it_dies(
        two: tuple[Cluster, Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    from lb_core import deliveries as deliveries_module
    from lb_core.deliveries import Deliveries
    from lb_core.integrations import Integrations

    monkeypatch.setattr(deliveries_module, "CLAIM_S", 0.5)
    tried: list[str] = []
    a, b = two
    mine = Deliveries(a.store, RecordingOutbound("a", tried), Integrations([]), retry_delays_s=(60,))  # type: ignore[arg-type]
    theirs = Deliveries(b.store, RecordingOutbound("b", tried), Integrations([]), retry_delays_s=(60,))  # type: ignore[arg-type]
    mine.cluster, theirs.cluster = a, b
    await mine.later({"what": "end callback", "integration": "default", "method": "GET",
                      "url": "http://moodle.example/end"})
    deadline = time.monotonic() + 5
    while tried != ["a"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await theirs.resume()  # another process starting: the delivery is a's, not tried twice
    await asyncio.sleep(0.1)
    assert tried == ["a"]
    for task in list(mine._tasks):  # a dies without a word: its claim is not renewed
        task.cancel()
    await asyncio.sleep(0.6)
    await theirs.resume()
    while tried != ["a", "b"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await theirs.close()
