"""Operators' changes to the rules: the global ones (kept in the store over the config file's) and an
integration's (kept with the integration).
"""

from __future__ import annotations

import logging
from typing import Any

from lb_core.controls import ControlError, Tell
from lb_core.controls_integrations import IntegrationControls
from lb_core.policy import Policy
from lb_core.rules import EMPTY as EMPTY_RULES
from lb_core.rules import RuleError, RuleSet, parse_rules
from lb_core.store import Store

log = logging.getLogger("bbb_lb")

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


class RuleControls:
    def __init__(self, configured: RuleSet, policy: Policy, store: Store, integrations: IntegrationControls,
                 tell: Tell | None = None) -> None:
        """``configured``: the config file's global rules (what a reset goes back to); ``policy``: the rules
        in force; ``integrations``: where an integration's rules are saved; ``tell``: tells the other
        processes on the same store that the global rules changed."""
        self.configured = configured
        self.policy = policy
        self.store = store
        self.integrations = integrations
        self.tell = tell

    def rules_of(self, name: str | None) -> dict[str, Any]:
        """The rules of an integration (its own and those in force) or, for None, the global ones."""
        if name is None:
            return {"rules": self.policy.global_rules.to_doc()}
        integration = self.integrations.named(name)
        return {"name": name, "rules": integration.rules.to_doc(),
                "max_duration_minutes": integration.max_duration_minutes,
                "effective": self.policy.rules_for(integration).to_doc()}

    async def change_rules(self, name: str | None, changes: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Set rules (``{call: {param: {op: value} | null}}``, null removing one) of an integration or, for
        None, the global ones; ``replace`` drops the rules not given."""
        current = self.policy.global_rules if name is None else self.integrations.named(name).rules
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
            await self.integrations.put_integration({"name": name, "rules": rules.to_doc()})
            return self.rules_of(name)
        await self.store.put(META_TABLE, RULES_KEY, {"rules": rules.to_doc()})
        self.policy.set_global_rules(rules)
        await self._tell()
        log.info("global rules changed")
        return self.rules_of(None)

    async def reset_global_rules(self) -> dict[str, Any]:
        """Forget the global rules set at run time: the config file's apply again."""
        await self.store.delete(META_TABLE, RULES_KEY)
        self.policy.set_global_rules(self.configured)
        await self._tell()
        log.info("global rules reset to the config file's")
        return self.rules_of(None)

    async def _tell(self) -> None:
        if self.tell is not None:
            await self.tell("rules", "")
