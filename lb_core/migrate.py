"""Copy the whole state from one store to another (TinyDB to Redis and back), for ``bbb-lb migrate``.

Everything the LB keeps is in tables and event partitions, so copying every table (meetings, servers
and integrations changed at run time, pending callbacks and deliveries, the event index, the instance
ID) and every partition moves an LB to another store without losing a meeting. The LBs using the
source must be stopped first: the embedded store is locked while one runs, so that case is refused by
the source itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from lb_core.store import Store

WRITES_AT_ONCE = 200  # concurrent puts: the embedded store batches them into one journal write


class MigrationError(Exception):
    """The copy cannot be done as asked, phrased for the operator."""


@dataclass
class Copied:
    documents: dict[str, int] = field(default_factory=dict)  # table -> documents
    events: int = 0
    partitions: int = 0

    def lines(self) -> list[str]:
        tables = [f"  {table}: {count}" for table, count in sorted(self.documents.items())]
        return ["documents per table:", *(tables or ["  (none)"]),
                f"events: {self.events} in {self.partitions} partitions"]


async def copy_state(source: Store, target: Store, *, overwrite: bool = False) -> Copied:
    """Copy every table and event partition of ``source`` into ``target`` (both open).

    An empty target is expected: one that holds data is refused unless ``overwrite`` (documents of the
    same key are replaced, others kept; events are appended, so copying twice would repeat them).
    """
    if not overwrite:
        held = await target.tables()
        partitions = await target.event_partitions()
        if held or partitions:
            what = ", ".join(held) + (f"{', ' if held else ''}{len(partitions)} event partitions" if partitions else "")
            raise MigrationError(f"the target store already holds data ({what}); "
                                 "pass --overwrite to copy over it")
    copied = Copied()
    for table in await source.tables():
        docs = await source.all(table)
        items = list(docs.items())
        for start in range(0, len(items), WRITES_AT_ONCE):
            await asyncio.gather(*(target.put(table, key, doc) for key, doc in items[start:start + WRITES_AT_ONCE]))
        copied.documents[table] = len(items)
    for partition in await source.event_partitions():
        events = await source.read_events(partition)
        target.append_events(events)
        await target.flush()  # one partition in memory at a time
        copied.events += len(events)
        copied.partitions += 1
    await check_copy(source, target, copied)
    return copied


async def check_copy(source: Store, target: Store, copied: Copied) -> None:
    """Read the target back: every document of the source is there, and every partition as long."""
    for table, count in copied.documents.items():
        stored = await target.all(table)
        wanted = await source.all(table)
        missing = [key for key, doc in wanted.items() if stored.get(key) != doc]
        if missing:
            raise MigrationError(f"table {table}: {len(missing)} of {count} documents did not arrive in the target")
    for partition in await source.event_partitions():
        if len(await target.read_events(partition)) < len(await source.read_events(partition)):
            raise MigrationError(f"event partition {partition} did not arrive whole in the target")
