"""Operators' run-time changes: servers added, removed, disabled, drained or emptied; integrations changed.

Each change is persisted (servers here, integrations by ``Integrations``) so it survives a restart.
The admin API and CLI call these; ``ServerOverrides`` re-applies the saved server changes at start and
ends a drain once the poller sees the server empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from lb_core import bbbxml
from lb_core.backend import BackendClient, BackendError
from lb_core.config import Config
from lb_core.config_sections import DISABLE_STATES, IntegrationConfig, ServerConfig
from lb_core.config_types import ConfigError, parse_request, validate
from lb_core.geo import GeoLocator, fill_geoloc
from lb_core.integrations import Integrations
from lb_core.lifecycle import MeetingLifecycle
from lb_core.meetings import MeetingRegistry
from lb_core.policy import Policy
from lb_core.pool import DisableState, Pool, Server
from lb_core.query import encode_value
from lb_core.rules import EMPTY as EMPTY_RULES
from lb_core.rules import RuleError, parse_rules
from lb_core.store import Store

log = logging.getLogger("bbb_lb")

SERVERS_TABLE = "servers"


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


class ServerOverrides:
    """The servers' run-time state as operators left it, saved in the store."""

    def __init__(self, store: Store, pool: Pool, meetings: MeetingRegistry) -> None:
        self.store = store
        self.pool = pool
        self.meetings = meetings
        self.on_change: Callable[[str, str], Coroutine[Any, Any, None]] | None = None  # tells the other processes

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
        if self.on_change is not None:
            await self.on_change("servers", name)

    async def after_poll(self, server: Server) -> None:
        """A draining server that has emptied is disabled: the drain is over."""
        if server.draining and server.meeting_count == 0 and not self.meetings.on_server(server.name):
            server.draining = False
            server.disable_state = DisableState.DISABLED
            await self.save(server.name)
            log.info("server %s drained: now disabled", server.name)


META_TABLE = "meta"
RULES_KEY = "rules"  # the global rules changed at run time, in META_TABLE


async def load_global_rules(store: Store, policy: Policy) -> None:
    """At start: global rules set at run time replace the config file's (until ``bbb-lb rules --reset``)."""
    saved = await store.get(META_TABLE, RULES_KEY)
    if saved is None:
        return
    try:
        policy.set_global_rules(parse_rules(saved.get("rules")))
    except RuleError as exc:
        log.error("the global rules changed at run time are not loaded: %s", exc)
        return
    log.info("global rules: the ones set at run time (the config file's apply again after `bbb-lb rules --reset`)")


class Controls:
    def __init__(self, config: Config, pool: Pool, meetings: MeetingRegistry, backend: BackendClient,
                 lifecycle: MeetingLifecycle, integrations: Integrations, overrides: ServerOverrides,
                 locator: GeoLocator | None, poll_soon: Callable[[], None],
                 background: Callable[[Coroutine[Any, Any, None]], None], policy: Policy | None = None,
                 store: Store | None = None) -> None:
        """``poll_soon``: the monitor's, so a new server is polled now; ``background``: runs a task owned
        by the LB (stopped with it); ``policy``: the rules and participant counts the handlers consult;
        ``store``: where global rules changed at run time are kept."""
        self.policy = policy if policy is not None else Policy(config.rules)
        self.store = store
        self.config = config
        self.pool = pool
        self.meetings = meetings
        self.backend = backend
        self.lifecycle = lifecycle
        self.integrations = integrations
        self.overrides = overrides
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

    # --- integrations ------------------------------------------------------------------------------------

    def list_integrations(self) -> list[dict[str, Any]]:
        """Every integration with its rights, limits, rules and usage (never its secrets)."""
        meetings = Counter(record.integration for server in self.pool.names()
                           for record in self.meetings.on_server(server))
        policy = self.policy
        return [{"name": i.name, "enabled": i.enabled, "can_record": i.can_record, "max_meetings": i.max_meetings,
                 "max_participants": i.max_participants, "limit_moderators": i.limit_moderators,
                 "max_duration_minutes": i.max_duration_minutes, "rules": i.rules.to_doc(),
                 "secrets": len(i.secrets), "meetings": meetings[i.name],
                 "participants": policy.participants.count(i.name), "limit_hits": policy.hits_of(i.name)}
                for i in self.integrations]

    def _integration(self, name: str) -> IntegrationConfig:
        found = self.integrations.get(name)
        if found is None:
            raise NotFound(f"no integration named {name!r}")
        return found

    def rules_of(self, name: str | None) -> dict[str, Any]:
        """The rules of an integration (its own and those in force) or, for None, the global ones."""
        if name is None:
            return {"rules": self.policy.global_rules.to_doc()}
        integration = self._integration(name)
        return {"name": name, "rules": integration.rules.to_doc(),
                "max_duration_minutes": integration.max_duration_minutes,
                "effective": self.policy.rules_for(integration).to_doc()}

    async def change_rules(self, name: str | None, changes: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Set rules (``{call: {param: {op: value} | null}}``, null removing one) of an integration or, for
        None, the global ones; ``replace`` drops the rules not given."""
        current = self.policy.global_rules if name is None else self._integration(name).rules
        doc = EMPTY_RULES.to_doc() if replace else current.to_doc()
        for call, params in changes.items():
            if not isinstance(params, dict):
                raise ControlError(f"rules.{call}: must be an object of parameter: {{operation: value}}")
            merged = dict(doc.get(call, {}))
            for param, rule in params.items():
                if rule is None:
                    merged.pop(param, None)
                else:
                    merged[param] = rule
            doc[call] = merged
        try:
            rules = parse_rules(doc)
        except RuleError as exc:
            raise ControlError(f"rules.{exc}") from None
        if name is not None:
            await self.put_integration({"name": name, "rules": rules.to_doc()})
            return self.rules_of(name)
        if self.store is not None:
            await self.store.put(META_TABLE, RULES_KEY, {"rules": rules.to_doc()})
        self.policy.set_global_rules(rules)
        await self._tell("rules")
        log.info("global rules changed")
        return self.rules_of(None)

    async def _tell(self, kind: str) -> None:
        """Other processes on the same store apply this change too (``ServerOverrides.on_change``)."""
        if self.overrides.on_change is not None:
            await self.overrides.on_change(kind, "")

    async def reset_global_rules(self) -> dict[str, Any]:
        """Forget the global rules set at run time: the config file's apply again."""
        if self.store is not None:
            await self.store.delete(META_TABLE, RULES_KEY)
        self.policy.set_global_rules(self.config.rules)
        await self._tell("rules")
        log.info("global rules reset to the config file's")
        return self.rules_of(None)

    async def put_integration(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add an integration, or change one (secrets, rights, limit); ``default`` is the config's."""
        name = spec.get("name")
        current = self.integrations.get(name) if isinstance(name, str) else None
        try:
            integration = parse_request(IntegrationConfig, spec,
                                        defaults=current.model_dump() if current is not None else None)
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
