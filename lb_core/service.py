"""One running load balancer: store, meeting map, event log, pool, gateway and poller, started and stopped together."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from lb_core.backend import BackendClient
from lb_core.config import Config
from lb_core.events import EventLog
from lb_core.gateway import Gateway
from lb_core.meetings import MeetingRegistry
from lb_core.monitor import Monitor
from lb_core.pool import Pool
from lb_core.store import Store, TinyDbStore

log = logging.getLogger("bbb_lb")

META_TABLE = "meta"


class LoadBalancer:
    """Build inside a running event loop with ``await LoadBalancer.start(config)``."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.pool = Pool(list(config.servers))
        self.meetings = MeetingRegistry(store)
        self.events = EventLog(store)
        self.backend: BackendClient | None = None
        self.gateway: Gateway | None = None
        self.monitor: Monitor | None = None
        self.instance_id = ""

    @classmethod
    async def start(cls, config: Config, store: Store | None = None, *, poll: bool = True) -> LoadBalancer:
        lb = cls(config, store or TinyDbStore(config.store_path))
        await lb._start(poll)
        return lb

    async def _start(self, poll: bool) -> None:
        await self.store.open()
        self.instance_id = await self._instance_id()
        await self.meetings.load()
        await self.events.load()
        self.backend = BackendClient(self.config.backend_timeout_s, self.config.backend_connect_timeout_s,
                                     self.config.max_body_bytes)
        self.gateway = Gateway(self.config, self.pool, self.meetings, self.events, self.backend, self.instance_id)
        self.monitor = Monitor(self.config, self.pool, self.meetings, self.backend, self.gateway.forget)
        if poll:
            self.monitor.start()
        log.info("bbb-lb %s started: %d servers, %d meetings known, %d meeting events",
                 self.instance_id, len(self.pool), len(self.meetings), len(self.events))

    async def _instance_id(self) -> str:
        if self.config.instance_id:
            return self.config.instance_id
        doc = await self.store.put_if_absent(META_TABLE, "instance", {"id": uuid.uuid4().hex})
        return str(doc["id"])

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        if self.backend is not None:
            await self.backend.close()
        await self.store.close()
        log.info("bbb-lb stopped")

    def status(self) -> dict[str, Any]:
        return {"instance": self.instance_id, "meetings": len(self.meetings), "events": len(self.events)}
