"""Operators' changes to the BBB servers, and those changes kept across restarts.

``ServerControls`` adds, removes, steers and empties servers at an operator's request; ``ServerOverrides``
saves the servers' run-time state in the store, re-applies it at start (and on a change notice from
another process) and ends a drain once the poller sees the server empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from lb_core import bbbxml
from lb_core.backend import BackendClient, BackendError
from lb_core.config import Config
from lb_core.config_sections import DISABLE_STATES, ServerConfig
from lb_core.config_types import ConfigError, parse_request, validate
from lb_core.controls import ControlError, NotFound, Tell
from lb_core.geo import GeoLocator, fill_geoloc
from lb_core.lifecycle import MeetingLifecycle
from lb_core.meetings import MeetingRegistry
from lb_core.policy import Policy
from lb_core.pool import DisableState, Pool, Server
from lb_core.query import encode_value
from lb_core.store import Store

log = logging.getLogger("bbb_lb")

SERVERS_TABLE = "servers"


def stored_server(doc: dict[str, Any]) -> ServerConfig:
    """A server added at run time, as saved; saves before the config models held ``disable_state``."""
    doc = dict(doc)
    legacy_state = doc.pop("disable_state", None)
    if "state" not in doc and legacy_state is not None:
        doc["state"] = next((k for k, v in DISABLE_STATES.items() if v == legacy_state), "auto")
    return validate(ServerConfig, doc, prefix=f"saved server {doc.get('name')!r}: ")


class ServerOverrides:
    """The servers' run-time state as operators left it, saved in the store."""

    def __init__(self, store: Store, pool: Pool, meetings: MeetingRegistry, tell: Tell | None = None) -> None:
        """``tell``: tells the other processes on the same store that a server changed."""
        self.store = store
        self.pool = pool
        self.meetings = meetings
        self.tell = tell

    async def apply(self) -> None:
        """At start: servers added, removed, disabled or draining at run time are so again."""
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

    async def save(self, name: str, *, removed: bool = False) -> None:
        server = self.pool.get(name)
        doc: dict[str, Any] = {"removed": removed}
        if server is not None and not removed:
            doc.update(config=server.config.model_dump(), disable_state=int(server.disable_state),
                       draining=server.draining)
        await self.store.put(SERVERS_TABLE, name, doc)
        if self.tell is not None:
            await self.tell("servers", name)

    async def after_poll(self, server: Server) -> None:
        """A draining server that has emptied is disabled: the drain is over."""
        if server.draining and server.meeting_count == 0 and not self.meetings.on_server(server.name):
            server.draining = False
            server.disable_state = DisableState.DISABLED
            await self.save(server.name)
            log.info("server %s drained: now disabled", server.name)


class ServerControls:
    """An operator's changes to the servers: each applied to the pool now and saved by ``ServerOverrides``."""

    def __init__(self, config: Config, pool: Pool, meetings: MeetingRegistry, backend: BackendClient,
                 lifecycle: MeetingLifecycle, overrides: ServerOverrides, policy: Policy,
                 locator: GeoLocator | None, poll_soon: Callable[[], None],
                 background: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """``poll_soon``: the monitor's, so a new server is polled now; ``background``: runs a task owned
        by the LB (stopped with it); ``policy``: forgets a removed server's participant counts."""
        self.config = config
        self.pool = pool
        self.meetings = meetings
        self.backend = backend
        self.lifecycle = lifecycle
        self.overrides = overrides
        self.policy = policy
        self.locator = locator
        self.poll_soon = poll_soon
        self.background = background

    def _server(self, name: str) -> Server:
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
        await self.overrides.save(config.name)
        self.background(fill_geoloc(self.locator, [server]))
        self.poll_soon()
        log.info("server %s added at %s", config.name, config.url)
        return self._server(config.name).summary(self.config.balancer, time.time())

    async def remove_server(self, name: str) -> dict[str, Any]:
        """Forget a server and the meetings the LB had placed on it (they cannot be reached through the LB)."""
        self._server(name)
        forgotten = await self._forget_meetings_on(name)
        self.pool.remove(name)
        self.policy.participants.forget_server(name)
        await self.overrides.save(name, removed=True)
        log.info("server %s removed (%d meetings forgotten)", name, forgotten)
        return {"name": name, "removed": True, "meetings_forgotten": forgotten}

    async def set_state(self, name: str, state: str) -> dict[str, Any]:
        """``enabled`` / ``disabled`` force the state, ``auto`` lets health and limits decide."""
        if state not in DISABLE_STATES:
            raise ControlError("state must be enabled, disabled or auto")
        server = self._server(name)
        server.disable_state = DisableState(DISABLE_STATES[state])
        server.draining = False
        await self.overrides.save(name)
        log.info("server %s set to %s", name, state)
        return server.summary(self.config.balancer, time.time())

    async def drain(self, name: str) -> dict[str, Any]:
        """No new meetings; running ones go on and stay joinable; disabled once empty."""
        server = self._server(name)
        server.draining = True
        await self.overrides.save(name)
        log.info("server %s draining (%d meetings)", name, server.meeting_count)
        await self.overrides.after_poll(server)
        return server.summary(self.config.balancer, time.time())

    async def panic(self, name: str, keep_state: bool = False) -> dict[str, Any]:
        """End every meeting on the server and forget them; disable it unless asked not to."""
        server = self._server(name)
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
        await self.overrides.save(name)
        log.warning("panic on server %s: %d meetings ended, %d forgotten", name, ended, forgotten)
        return {**server.summary(self.config.balancer, time.time()), "meetings_ended": ended,
                "meetings_forgotten": forgotten}

    async def _forget_meetings_on(self, name: str) -> int:
        records = self.meetings.on_server(name)
        for record in records:
            await self.lifecycle.forget(record)
        return len(records)
