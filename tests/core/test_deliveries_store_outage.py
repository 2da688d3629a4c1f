"""A delivery to an integration goes on while the store is away (Redis down), and is forgotten once it is back."""

from __future__ import annotations

from typing import Any

from lb_core.deliveries import DELIVERIES_TABLE, Deliveries
from lb_core.integrations import Integrations
from lb_core.store import Doc, StoreUnavailable
from lb_core.store_memory import MemoryStore
from tests.core.conftest import until


class AwayStore(MemoryStore):
    """A MemoryStore whose writes fail while ``away`` (as a RedisStore's do while Redis is down)."""

    away = False

    async def put(self, table: str, key: str, doc: Doc) -> None:
        if self.away:
            raise StoreUnavailable("Redis at redis://127.0.0.1:1/0 is not available: timed out")
        await super().put(table, key, doc)

    async def delete(self, table: str, key: str) -> None:
        if self.away:
            raise StoreUnavailable("Redis at redis://127.0.0.1:1/0 is not available: timed out")
        await super().delete(table, key)


class Receiver:
    """An integration answering 503 the first time, then 200."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def send(self, url: str, *, method: str = "GET", data: Any = None) -> int:
        self.calls.append(url)
        return 503 if len(self.calls) == 1 else 200

    async def close(self) -> None:
        pass


async def test_a_delivery_is_retried_and_forgotten_across_a_store_outage() -> None:
    store = AwayStore()
    await store.open()
    receiver = Receiver()
    deliveries = Deliveries(store, receiver, Integrations([]), retry_delays_s=(0.05, 0.05))  # type: ignore[arg-type]
    await deliveries.later({"method": "GET", "url": "https://moodle.example/end?meetingID=m", "integration": "default",
                            "what": "end callback"})
    assert len(await store.all(DELIVERIES_TABLE)) == 1
    store.away = True  # the first attempt fails (503) while the store cannot note it
    await until(lambda: deliveries.delivered_total == 1, what="the retry delivered despite the store")
    assert len(receiver.calls) == 2
    assert len(await store.all(DELIVERIES_TABLE)) == 1  # not forgotten yet: the store is away
    store.away = False
    await until(lambda: _empty(store), what="the delivery removed once the store is back")
    await deliveries.close()


async def _empty(store: MemoryStore) -> bool:
    return not await store.all(DELIVERIES_TABLE)
