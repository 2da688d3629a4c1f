"""One running load balancer: store, meeting map, event log, pool, gateway and poller, started and stopped together."""

from __future__ import annotations

import asyncio
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
    IntegrationConfig,
    ServerConfig,
    parse_request,
    validate,
)
from lb_core.events import EventLog
from lb_core.gateway import Gateway
from lb_core.geo import GeoLocator, fill_geoloc
from lb_core.meetings import MeetingRegistry
from lb_core.monitor import Monitor
from lb_core.outbound import OutboundClient, own_ports
from lb_core.pool import DisableState, Pool
from lb_core.query import encode_value
from lb_core.store import Store, make_store

log = logging.getLogger("bbb_lb")

META_TABLE = "meta"
SERVERS_TABLE = "servers"
INTEGRATIONS_TABLE = "integrations"


class ControlError(Exception):
    """An operator's request that cannot be carried out, phrased for the operator."""


class NotFound(ControlError):
    """The server or integration an operator named does not exist (the admin API answers 404)."""


def stored_server(doc: dict[str, Any]) -> ServerConfig:
    """A server added at run time, as saved; saves before the config models held ``disable_state``."""
    doc = dict(doc)
    legacy_state = doc.pop("disable_state", None)
    if "state" not in doc and legacy_state is not None:
        doc["state"] = next((k for k, v in DISABLE_STATES.items() if v == legacy_state), "auto")
    return validate(ServerConfig, doc, prefix=f"saved server {doc.get('name')!r}: ")


class LoadBalancer:
    """Build inside a running event loop with ``await LoadBalancer.start(config)``."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.pool = Pool(list(config.servers))
        self.meetings = MeetingRegistry(store)
        self.events = EventLog(store, config.record_events, config.events_retention_days)
        self.backend: BackendClient | None = None
        self.gateway: Gateway | None = None
        self.monitor: Monitor | None = None
        self.callbacks: Callbacks | None = None
        self.instance_id = ""
        self.integrations: list[IntegrationConfig] = list(config.integrations)
        self.locator: GeoLocator | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, config: Config, store: Store | None = None, *, poll: bool = True) -> LoadBalancer:
        lb = cls(config, store or make_store(config))
        await lb._start(poll)
        return lb

    async def _start(self, poll: bool) -> None:
        await self.store.open()
        self.instance_id = await self._instance_id()
        await self.meetings.load()
        await self.events.load()
        await self._apply_overrides()
        self.backend = BackendClient(self.config.backend_timeout_s, self.config.backend_connect_timeout_s,
                                     self.config.max_body_bytes)
        if self.config.geo.database:
            self.locator = await asyncio.to_thread(GeoLocator, self.config.geo.database)
        self.gateway = Gateway(self.config, self.pool, self.meetings, self.events, self.backend, self.instance_id,
                               locate=self.locator.locate if self.locator is not None else None)
        self.gateway.set_integrations(self.integrations)
        self.callbacks = Callbacks(self.store, self.backend, self.pool, self.config.public_url,
                                   lambda: self.gateway.integrations if self.gateway else {},
                                   self.gateway.meeting_ended, self.config.callback_retry_delays_s,
                                   outbound=OutboundClient(self.config.callbacks, own_ports(self.config),
                                                           self.config.public_url))
        self.gateway.callbacks = self.callbacks
        await self.callbacks.resume()
        self.monitor = Monitor(self.config, self.pool, self.meetings, self.backend, self.gateway.forget,
                               after_poll=self._after_poll, on_listing=self.gateway.remember_listing)
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
        if self.callbacks is not None:
            await self.callbacks.close()
        if self.backend is not None:
            await self.backend.close()
        await self.events.close()
        await self.store.close()
        log.info("bbb-lb stopped")

    def note_own_listener(self, port: int) -> None:
        """A listener of this LB bound late (port 0): callbacks must never be sent to it either."""
        if self.callbacks is not None:
            self.callbacks.outbound.policy.own_ports.add(port)

    def status(self) -> dict[str, Any]:
        return {"instance": self.instance_id, "meetings": len(self.meetings), "events": len(self.events)}

    # --- run-time changes by operators (persisted, so they survive a restart) ------------------------

    async def _apply_overrides(self) -> None:
        for name, doc in (await self.store.all(SERVERS_TABLE)).items():
            if doc.get("removed"):
                self.pool.remove(name)
                continue
            if "config" in doc:
                try:
                    config = stored_server(doc["config"])
                except ConfigError as exc:
                    log.error("server %s added at run time is not loaded: its saved settings are invalid: %s",
                              name, exc)
                    continue
                server = self.pool.get(name)
                if server is None:
                    server = self.pool.add(config)
                else:
                    server.config = config
            server = self.pool.get(name)
            if server is not None:
                server.disable_state = DisableState(doc.get("disable_state", server.disable_state))
                server.draining = bool(doc.get("draining", False))
        self.integrations = list(self.config.integrations)
        for name, doc in (await self.store.all(INTEGRATIONS_TABLE)).items():
            self.integrations = [i for i in self.integrations if i.name != name]
            if not doc.get("removed"):
                secrets = list(doc["secrets"])
                self.integrations.append(IntegrationConfig(
                    name=name, secret=secrets[0], previous_secret=secrets[1] if len(secrets) > 1 else None,
                    enabled=doc.get("enabled", True), can_record=doc.get("can_record", True),
                    max_meetings=doc.get("max_meetings")))

    async def _save_server(self, name: str, *, removed: bool = False) -> None:
        server = self.pool.get(name)
        doc: dict[str, Any] = {"removed": removed}
        if server is not None and not removed:
            doc.update(config=server.config.model_dump(), disable_state=int(server.disable_state),
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
            config = parse_request(ServerConfig, spec)
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
        assert self.gateway is not None
        records = self.meetings.on_server(name)
        for record in records:
            await self.gateway.forget(record)
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
        current = next((i for i in self.integrations if i.name == spec.get("name")), None)
        try:
            integration = parse_request(IntegrationConfig, spec,
                                        defaults=current.model_dump() if current is not None else None)
        except ConfigError as exc:
            raise ControlError(str(exc)) from None
        for other in self.integrations:
            if other.name != integration.name and set(other.secrets) & set(integration.secrets):
                raise ControlError(f"integration {other.name!r} uses that secret already")
        self.integrations = [i for i in self.integrations if i.name != integration.name] + [integration]
        await self.store.put(INTEGRATIONS_TABLE, integration.name, {
            "secrets": list(integration.secrets), "enabled": integration.enabled,
            "can_record": integration.can_record, "max_meetings": integration.max_meetings})
        assert self.gateway is not None
        self.gateway.set_integrations(self.integrations)
        log.info("integration %s saved", integration.name)
        return next(i for i in self.list_integrations() if i["name"] == integration.name)

    async def remove_integration(self, name: str) -> dict[str, Any]:
        if name == "default":
            raise ControlError("the default integration is the config's top-level secret; change it there")
        if not any(i.name == name for i in self.integrations):
            raise NotFound(f"no integration named {name!r}")
        self.integrations = [i for i in self.integrations if i.name != name]
        await self.store.put(INTEGRATIONS_TABLE, name, {"removed": True})
        assert self.gateway is not None
        self.gateway.set_integrations(self.integrations)
        return {"name": name, "removed": True}
