"""RedisStore beyond the Store contract: its keys, sharing, passwords, and what a down or slow Redis does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from lb_core.store import StoreError, StoreUnavailable
from lb_core.store_redis import RedisStore
from tests.conftest import RedisServer, free_port
from tests.core.conftest import until


@pytest.fixture
async def opened() -> AsyncIterator[list[RedisStore]]:
    """Stores a test opens; closed at the end whatever happened."""
    stores: list[RedisStore] = []
    yield stores
    for store in stores:
        await store.close()


async def open_store(opened: list[RedisStore], url: str, prefix: str, **kwargs: float) -> RedisStore:
    store = RedisStore(url, prefix, **kwargs)  # type: ignore[arg-type]
    await store.open()
    opened.append(store)
    return store


async def test_every_key_starts_with_the_prefix(redis_server: RedisServer, redis_prefix: str, opened) -> None:
    store = await open_store(opened, redis_server.url, redis_prefix)
    await store.put("meetings", "default m1", {"server": "bbb1"})
    store.append_events([{"p": "00000001", "n": 1}])
    await store.flush()
    keys = redis_server.client().keys(f"{redis_prefix}*")
    assert sorted(keys) == [f"{redis_prefix}:e:00000001", f"{redis_prefix}:ep", f"{redis_prefix}:t:meetings"]
    assert store.key("poller") == f"{redis_prefix}:poller"


async def test_two_processes_on_one_prefix_share_everything_and_other_prefixes_nothing(
        redis_server: RedisServer, redis_prefix: str, opened) -> None:
    one = await open_store(opened, redis_server.url, redis_prefix)
    two = await open_store(opened, redis_server.url, redis_prefix)
    other = await open_store(opened, redis_server.url, redis_prefix + "-other")
    await one.put("meetings", "default m1", {"server": "bbb1"})
    assert await two.get("meetings", "default m1") == {"server": "bbb1"}
    one.append_events([{"p": "00000001", "n": 1}])
    two.append_events([{"p": "00000001", "n": 2}])
    # Written by each instance's writer as soon as its loop is free, not at the next flush of the reader.
    await until(lambda: two.read_events("00000001"), what="the other instance's event")
    await until(lambda: _count(two, "00000001", 2), what="both instances' events")
    assert sorted(e["n"] for e in await one.read_events("00000001")) == [1, 2]
    assert await other.all("meetings") == {} and await other.event_partitions() == []


async def _count(store: RedisStore, partition: str, wanted: int) -> bool:
    return len(await store.read_events(partition)) >= wanted


async def test_an_event_batch_written_twice_is_read_back_once(redis_server: RedisServer, redis_prefix: str,
                                                               opened) -> None:
    """A timeout can cut the reply of a batch Redis applied; the retry writes the same lines again."""
    store = await open_store(opened, redis_server.url, redis_prefix)
    events = [{"p": "00000001", "t": "join", "j": "a", "n": 1}, {"p": "00000001", "t": "join", "j": "b", "n": 1}]
    for _ in range(2):
        store.append_events(events)
        await store.flush()
    assert redis_server.client().llen(store.key("e", "00000001")) == 4
    assert await store.read_events("00000001") == events


async def test_put_if_absent_is_atomic_across_instances(redis_server: RedisServer, redis_prefix: str, opened) -> None:
    stores = [await open_store(opened, redis_server.url, redis_prefix) for _ in range(3)]
    results = await asyncio.gather(*(stores[i % 3].put_if_absent("meta", "instance", {"id": i}) for i in range(30)))
    assert len({r["id"] for r in results}) == 1


async def test_a_password_in_the_url_is_used_and_never_shown(tmp_path, opened) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret-pw").start()
    try:
        store = await open_store(opened, server.url, "p")
        await store.put("t", "k", {"v": 1})
        assert await store.get("t", "k") == {"v": 1}
        wrong = RedisStore(server.url.replace("s3cret-pw", "wrong-pw"), "p")
        with pytest.raises(StoreError) as caught:
            await wrong.open()
        assert "wrong-pw" not in str(caught.value) and "redis://:***@127.0.0.1" in str(caught.value)
        await wrong.close()
    finally:
        server.stop()


async def test_tls_with_a_password_in_a_rediss_url(tmp_path, opened) -> None:
    server = RedisServer(tmp_path / "redis", password="tls-pw", tls=True).start()
    try:
        assert server.url.startswith("rediss://:tls-pw@127.0.0.1:")
        store = await open_store(opened, server.url, "p")
        await store.put("t", "k", {"v": 1})
        assert await store.get("t", "k") == {"v": 1}
        plain = RedisStore(server.url.replace("rediss://", "redis://").split("?")[0], "p", timeout_s=0.5)
        with pytest.raises(StoreError):  # the port speaks TLS only
            await plain.open()
        await plain.close()
    finally:
        server.stop()


async def test_unreachable_redis_is_a_clear_prompt_error(opened) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    store = RedisStore(url, "p", timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "cannot reach the store" in message and f"{url.replace('hunter2', '***')}" in message
    assert "hunter2" not in message
    await store.close()


async def test_a_slow_redis_fails_calls_within_the_timeout(own_redis: RedisServer, opened) -> None:
    store = await open_store(opened, own_redis.url, "p", timeout_s=0.3)
    await store.put("t", "k", {"v": 1})
    sleeper = await asyncio.to_thread(own_redis.sleep_in_background, 2)  # Redis answers nobody now
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store.get("t", "k")
        with pytest.raises(StoreUnavailable):
            await store.put("t", "k2", {"v": 2})
        assert time.monotonic() - started < 2 * 0.3 + 0.3  # two calls, each cut at the timeout
        assert await store.problem() is not None
    finally:
        await asyncio.to_thread(sleeper.join)
    await until(lambda: _readable(store), what="the store answering again")
    assert await store.get("t", "k") == {"v": 1}


async def _readable(store: RedisStore) -> bool:
    return await store.problem() is None


async def test_a_restarted_redis_is_used_again_without_reopening_and_keeps_everything(
        own_redis: RedisServer, opened) -> None:
    store = await open_store(opened, own_redis.url, "p", timeout_s=0.5)
    await asyncio.gather(*(store.put("meetings", f"default m{i}", {"server": f"bbb{i % 3}"}) for i in range(50)))
    own_redis.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get("meetings", "default m1")
    with pytest.raises(StoreUnavailable):
        await store.put("meetings", "default new", {"server": "bbb1"})
    assert time.monotonic() - started < 2
    assert await store.problem() is not None
    store.append_events([{"p": "00000001", "n": i} for i in range(5)])  # queued while Redis is away
    assert store.stats()["events_queued"] == 5
    await asyncio.to_thread(own_redis.start)
    await until(lambda: _readable(store), what="the store answering again")
    assert len(await store.all("meetings")) == 50  # appendonly: nothing lost over the restart
    assert await store.get("meetings", "default new") is None  # the failed write was not made
    await until(lambda: _count(store, "00000001", 5), what="the queued events written")
    assert [e["n"] for e in await store.read_events("00000001")] == [0, 1, 2, 3, 4]
    assert store.stats()["events_queued"] == 0


async def test_a_redis_that_can_lose_meetings_is_warned_about(own_redis: RedisServer, opened,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    store = await open_store(opened, own_redis.url, "p")  # appendonly yes, noeviction: nothing to say
    assert await store.setup_warnings() == []
    client = own_redis.client()
    client.config_set("appendonly", "no")
    client.config_set("maxmemory-policy", "allkeys-lru")
    await open_store(opened, own_redis.url, "p")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("appendonly no" in w for w in warned) and any("allkeys-lru" in w for w in warned), warned


def test_the_redis_fixture_takes_another_port_when_its_port_is_taken(tmp_path, monkeypatch) -> None:
    import socket

    import tests.conftest as harness

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(harness, "free_port", lambda: next(ports, None) or free_port())
        server = RedisServer(tmp_path / "redis").start()
        try:
            assert server.port != taken and server.client().ping()
        finally:
            server.stop()
