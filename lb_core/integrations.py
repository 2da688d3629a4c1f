"""The integrations (tenants) the LB serves: the config's, changed at run time by operators.

The one owner of this state: the verifier looks secrets up here, callbacks find the secret to sign
with here, the admin API changes it here, and changes are persisted here so they survive a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from lb_core.config_sections import IntegrationConfig
from lb_core.config_types import ConfigError, validate
from lb_core.store import Store

INTEGRATIONS_TABLE = "integrations"
log = logging.getLogger("bbb_lb")


def stored_integration(name: str, doc: dict[str, Any]) -> IntegrationConfig:
    """An integration added or changed at run time, as saved (older saves lack the newer keys)."""
    secrets = list(doc.get("secrets") or [""])
    fields = {k: v for k, v in doc.items() if k not in ("secrets", "removed")}
    return validate(IntegrationConfig, {"name": name, "secret": secrets[0],
                                        "previous_secret": secrets[1] if len(secrets) > 1 else None, **fields},
                    prefix=f"saved integration {name!r}: ")


class Integrations:
    def __init__(self, configured: list[IntegrationConfig] | tuple[IntegrationConfig, ...],
                 store: Store | None = None, on_change: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.on_change = on_change  # tells the other processes on the same store
        self._items: list[IntegrationConfig] = []
        self._by_name: dict[str, IntegrationConfig] = {}
        # (secret, integration) for every accepted secret, in order: what a checksum is matched against.
        self.secrets: list[tuple[str, IntegrationConfig]] = []
        self._replace(list(configured))

    def _replace(self, integrations: list[IntegrationConfig]) -> None:
        self._items = integrations
        self._by_name = {i.name: i for i in integrations}
        self.secrets = [(secret, i) for i in integrations for secret in i.secrets]

    def get(self, name: str) -> IntegrationConfig | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> IntegrationConfig:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[IntegrationConfig]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    async def load(self) -> None:
        """Apply the operators' changes saved in the store over the config's integrations."""
        if self.store is None:
            return
        items = list(self._items)
        for name, doc in (await self.store.all(INTEGRATIONS_TABLE)).items():
            if not doc.get("removed"):
                try:
                    integration = stored_integration(name, doc)
                except ConfigError as exc:
                    log.error("integration %s changed at run time is not loaded: its saved settings are "
                              "invalid: %s", name, exc)
                    continue
            items = [i for i in items if i.name != name]
            if not doc.get("removed"):
                items.append(integration)
        self._replace(items)

    async def put(self, integration: IntegrationConfig) -> None:
        """Add or replace (by name) an integration, persisted."""
        if self.store is not None:
            await self.store.put(INTEGRATIONS_TABLE, integration.name, {
                "secrets": list(integration.secrets),
                **integration.model_dump(exclude={"name", "secret", "previous_secret"})})
        self._replace([i for i in self._items if i.name != integration.name] + [integration])
        if self.on_change is not None:
            await self.on_change("integrations", integration.name)

    async def remove(self, name: str) -> None:
        if self.store is not None:
            await self.store.put(INTEGRATIONS_TABLE, name, {"removed": True})
        self._replace([i for i in self._items if i.name != name])
        if self.on_change is not None:
            await self.on_change("integrations", name)
