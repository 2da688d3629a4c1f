"""One running load balancer: store, meeting map, event log, pool, gateway and poller, started and stopped together."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from lb_core import bbbxml
from lb_core.backend import BackendClient, BackendError
from lb_core.callbacks import Callbacks
from lb_core.config import (
    DISABLE_STATES,
    Config,
    ConfigError,
    ServerConfig,
    _Reader,
    read_integration,
    read_server,
)
from lb_core.deliveries import Deliveries
from lb_core.events import EventLog
from lb_core.forwarding import Forwarder
from lb_core.gateway import Gateway
from lb_core.geo import GeoLocator, fill_geoloc
from lb_core.handlers.context import Services
from lb_core.integrations import Integrations
from lb_core.lifecycle import MeetingLifecycle
from lb_core.listings import ListingsCache
from lb_core.meetings import MeetingRegistry
from lb_core.monitor import Monitor
from lb_core.outbound import OutboundClient, own_ports
from lb_core.placement import Placer
from lb_core.pool import DisableState, Pool
from lb_core.query import encode_value
from lb_core.recording_index import RecordingIndex
from lb_core.store import Store, TinyDbStore
from lb_core.verify import Verifier

log = logging.getLogger("bbb_lb")

META_TABLE = "meta"
SERVERS_TABLE = "servers"


class ControlError(Exception):
    """An operator's request that cannot be carried out, phrased for the operator."""


class NotFound(ControlError):
    """The server or integration an operator named does not exist (the admin API answers 404)."""


class LoadBalancer:
    """Build inside a running event loop with ``await LoadBalancer.start(config)``."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.pool = Pool(list(config.servers))
        self.meetings = MeetingRegistry(store)
        self.events = EventLog(store, config.record_events)
        self.integrations = Integrations(config.integrations, store)
        self.backend: BackendClient | None = None
        self.lifecycle: MeetingLifecycle | None = None
        self.gateway: Gateway | None = None
        self.monitor: Monitor | None = None
        self.callbacks: Callbacks | None = None
        self.deliveries: Deliveries | None = None
        self.instance_id = ""
        self.locator: GeoLocator | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, config: Config, store: Store | None = None, *, poll: bool = True) -> LoadBalancer:
        lb = cls(config, store or TinyDbStore(config.store_path))
        await lb._start(poll)
        return lb

    async def _start(self, poll: bool) -> None:
        """Each part is built once its dependencies exist: nothing is wired in afterwards."""
        config = self.config
        await self.store.open()
        self.instance_id = await self._instance_id()
        await self.meetings.load()
        await self.events.load()
        await self._apply_overrides()
        await self.integrations.load()
        backend = self.backend = BackendClient(config.backend_timeout_s, config.backend_connect_timeout_s,
                                               config.max_body_bytes)
        if config.geo.database:
            self.locator = await asyncio.to_thread(GeoLocator, config.geo.database)
        forwarder = Forwarder(config, self.pool, backend)
        listings = ListingsCache(config, self.pool, forwarder)
        recordings = RecordingIndex(self.pool)
        lifecycle = self.lifecycle = MeetingLifecycle(config, self.pool, self.meetings, self.events, backend,
                                                      listings, recordings)
        self.deliveries = Deliveries(self.store, OutboundClient(config.callbacks, own_ports(config), config.public_url),
                                     self.integrations, config.callback_retry_delays_s)
        self.callbacks = Callbacks(self.store, self.pool, config.public_url, lifecycle.meeting_ended, self.deliveries)
        placer = Placer(config, self.pool, self.meetings, self.locator.locate if self.locator is not None else None)
        services = Services(config, self.pool, self.meetings, self.events, backend, forwarder, listings, recordings,
                            lifecycle, placer, self.callbacks, self.instance_id)
        self.gateway = Gateway(config, Verifier(config, self.integrations), services, self.callbacks)
        await self.deliveries.resume()
        self.monitor = Monitor(config, self.pool, self.meetings, backend, lifecycle.forget,
                               after_poll=self._after_poll, on_listing=listings.remember)
        if poll:
            self.monitor.start()
        self._background(fill_geoloc(self.locator, self.pool))
        log.info("bbb-lb %s started: %d servers, %d meetings known, %d meeting events",
                 self.instance_id, len(self.pool), len(self.meetings), len(self.events))

    async def _instance_id(self) -> str:
        if self.config.instance_id:
            return self.config.instance_id
        doc = await self.store.put_if_absent(META_TABLE, "instance", {"id": uuid.uuid4().hex})
        return str(doc["id"])

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.locator is not None:
            self.locator.close()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.deliveries is not None:
            await self.deliveries.close()
        if self.backend is not None:
            await self.backend.close()
        await self.store.close()
        log.info("bbb-lb stopped")

    def note_own_listener(self, port: int) -> None:
        """A listener of this LB bound late (port 0): callbacks must never be sent to it either."""
        if self.deliveries is not None:
            self.deliveries.outbound.policy.own_ports.add(port)

    def status(self) -> dict[str, Any]:
        return {"instance": self.instance_id, "meetings": len(self.meetings), "events": len(self.events)}

    # --- run-time changes by operators (persisted, so they survive a restart) ------------------------

    async def _apply_overrides(self) -> None:
        for name, doc in (await self.store.all(SERVERS_TABLE)).items():
            if doc.get("removed"):
                self.pool.remove(name)
                continue
            if "config" in doc:
                config = ServerConfig(**doc["config"])
                server = self.pool.get(name)
                if server is None:
                    server = self.pool.add(config)
                else:
                    server.config = config
            server = self.pool.get(name)
            if server is not None:
                server.disable_state = DisableState(doc.get("disable_state", server.disable_state))
                server.draining = bool(doc.get("draining", False))

    async def _save_server(self, name: str, *, removed: bool = False) -> None:
        server = self.pool.get(name)
        doc: dict[str, Any] = {"removed": removed}
        if server is not None and not removed:
            doc.update(config=dataclasses.asdict(server.config), disable_state=int(server.disable_state),
                       draining=server.draining)
        await self.store.put(SERVERS_TABLE, name, doc)

    def _server(self, name: str):  # type: ignore[no-untyped-def]
        server = self.pool.get(name)
        if server is None:
            raise NotFound(f"no server named {name!r}")
        return server

    def list_servers(self) -> list[dict[str, Any]]:
        now = time.time()
        return [s.summary(self.config.balancer, now) for s in self.pool]

    async def add_server(self, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            config = read_server(_Reader("request", dict(spec), "server"))
        except ConfigError as exc:
            raise ControlError(str(exc)) from None
        if self.pool.get(config.name) is not None:
            raise ControlError(f"a server named {config.name!r} exists already")
        server = self.pool.add(config)
        await self._save_server(config.name)
        self._background(fill_geoloc(self.locator, [server]))
        if self.monitor is not None:
            self.monitor.poll_soon()
        log.info("server %s added at %s", config.name, config.url)
        return self._server(config.name).summary(self.config.balancer, time.time())

    async def remove_server(self, name: str) -> dict[str, Any]:
        """Forget a server and the meetings the LB had placed on it (they cannot be reached through the LB)."""
        self._server(name)
        forgotten = await self._forget_meetings_on(name)
        self.pool.remove(name)
        await self._save_server(name, removed=True)
        log.info("server %s removed (%d meetings forgotten)", name, forgotten)
        return {"name": name, "removed": True, "meetings_forgotten": forgotten}

    async def set_state(self, name: str, state: str) -> dict[str, Any]:
        """``enabled`` / ``disabled`` force the state, ``auto`` lets health and limits decide."""
        if state not in DISABLE_STATES:
            raise ControlError("state must be enabled, disabled or auto")
        server = self._server(name)
        server.disable_state = DisableState(DISABLE_STATES[state])
        server.draining = False
        await self._save_server(name)
        log.info("server %s set to %s", name, state)
        return server.summary(self.config.balancer, time.time())

    async def drain(self, name: str) -> dict[str, Any]:
        """No new meetings; running ones go on and stay joinable; disabled once empty."""
        server = self._server(name)
        server.draining = True
        await self._save_server(name)
        log.info("server %s draining (%d meetings)", name, server.meeting_count)
        await self._after_poll(server)
        return server.summary(self.config.balancer, time.time())

    async def panic(self, name: str, keep_state: bool = False) -> dict[str, Any]:
        """End every meeting on the server and forget them; disable it unless asked not to."""
        server = self._server(name)
        assert self.backend is not None
        records = self.meetings.on_server(name)
        backend_ids = set(server.meetings) | {r.meeting_id for r in records}
        passwords = {r.meeting_id: r.moderator_pw for r in records}

        async def end(meeting_id: str) -> bool:
            query = "meetingID=" + encode_value(meeting_id)
            if passwords.get(meeting_id):
                query += "&password=" + encode_value(passwords[meeting_id])
            try:
                reply = await self.backend.call(server.config, "end", query, timeout_s=self.config.monitor.timeout_s)
                return bbbxml.returncode(bbbxml.parse(reply.body)) == "SUCCESS"
            except (BackendError, bbbxml.XmlError):
                return False

        ended = sum(await asyncio.gather(*(end(m) for m in backend_ids)))
        forgotten = await self._forget_meetings_on(name)
        if not keep_state:
            server.disable_state = DisableState.DISABLED
        server.draining = False
        await self._save_server(name)
        log.warning("panic on server %s: %d meetings ended, %d forgotten", name, ended, forgotten)
        return {**server.summary(self.config.balancer, time.time()), "meetings_ended": ended,
                "meetings_forgotten": forgotten}

    async def _forget_meetings_on(self, name: str) -> int:
        assert self.lifecycle is not None
        records = self.meetings.on_server(name)
        for record in records:
            await self.lifecycle.forget(record)
        return len(records)

    async def _after_poll(self, server) -> None:  # type: ignore[no-untyped-def]
        """A draining server that has emptied is disabled: the drain is over."""
        if server.draining and server.meeting_count == 0 and not self.meetings.on_server(server.name):
            server.draining = False
            server.disable_state = DisableState.DISABLED
            await self._save_server(server.name)
            log.info("server %s drained: now disabled", server.name)

    # --- integrations ------------------------------------------------------------------------------------

    def list_integrations(self) -> list[dict[str, Any]]:
        return [{"name": i.name, "enabled": i.enabled, "can_record": i.can_record, "max_meetings": i.max_meetings,
                 "secrets": len(i.secrets), "meetings": self.meetings.count(i.name)} for i in self.integrations]

    async def put_integration(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add an integration, or change one (secrets, rights, limit); ``default`` is the config's."""
        spec = dict(spec)
        name = spec.get("name")
        current = self.integrations.get(name) if isinstance(name, str) else None
        if current is not None:
            merged: dict[str, Any] = {"name": current.name, "secret": current.secrets[0],
                                      "enabled": current.enabled, "can_record": current.can_record,
                                      "max_meetings": current.max_meetings}
            if len(current.secrets) > 1:
                merged["previous_secret"] = current.secrets[1]
            merged.update({k: v for k, v in spec.items()})
            spec = {k: v for k, v in merged.items() if v is not None}
        try:
            integration = read_integration(_Reader("request", spec, "integration"))
        except ConfigError as exc:
            raise ControlError(str(exc)) from None
        for other in self.integrations:
            if other.name != integration.name and set(other.secrets) & set(integration.secrets):
                raise ControlError(f"integration {other.name!r} uses that secret already")
        await self.integrations.put(integration)
        log.info("integration %s saved", integration.name)
        return next(i for i in self.list_integrations() if i["name"] == integration.name)

    async def remove_integration(self, name: str) -> dict[str, Any]:
        if name == "default":
            raise ControlError("the default integration is the config's top-level secret; change it there")
        if name not in self.integrations:
            raise NotFound(f"no integration named {name!r}")
        await self.integrations.remove(name)
        return {"name": name, "removed": True}
