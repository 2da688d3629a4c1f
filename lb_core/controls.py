"""Operators' run-time changes, one class per thing changed, each persisting what it changes:

- ``controls_servers.ServerControls``: servers added, removed, disabled, drained or emptied (``lb.server_controls``);
- ``controls_integrations.IntegrationControls``: integrations added, changed or removed (``lb.integration_controls``);
- ``controls_rules.RuleControls``: the global rules and an integration's (``lb.rule_controls``).

The admin API and CLI call these. This module holds what they share: the errors an operator is shown,
and how a change is told to the other processes on the same store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# Tells the other processes on the same store that ``(kind, subject)`` changed (``Cluster.publish``);
# None when this process is alone.
Tell = Callable[[str, str], Awaitable[None]]


class ControlError(Exception):
    """An operator's request that cannot be carried out, phrased for the operator."""


class NotFound(ControlError):
    """The server, integration or recording an operator named does not exist (the admin API answers 404)."""
