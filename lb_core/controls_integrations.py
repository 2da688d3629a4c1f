"""Operators' changes to the integrations (tenants), and the integrations as operators see them.

``Integrations`` owns the integrations and persists them; this class validates an operator's change,
refuses a secret another integration uses, and lists each integration with its usage (never its secrets).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from lb_core.config_sections import IntegrationConfig
from lb_core.config_types import ConfigError, parse_request
from lb_core.controls import ControlError, NotFound
from lb_core.integrations import Integrations
from lb_core.meetings import MeetingRegistry
from lb_core.policy import Policy
from lb_core.pool import Pool

log = logging.getLogger("bbb_lb")


class IntegrationControls:
    def __init__(self, integrations: Integrations, pool: Pool, meetings: MeetingRegistry, policy: Policy) -> None:
        """``pool`` and ``meetings`` count each integration's meetings; ``policy`` its participants and refusals."""
        self.integrations = integrations
        self.pool = pool
        self.meetings = meetings
        self.policy = policy

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

    def named(self, name: str) -> IntegrationConfig:
        """The integration called ``name``, or ``NotFound``."""
        found = self.integrations.get(name)
        if found is None:
            raise NotFound(f"no integration named {name!r}")
        return found

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
