"""The decision trace of one API request: what the LB decided, for logs, metrics and mitmweb.

Handlers write it as they go (route, server, placement scores, each backend call); the gateway fills
in the call, the signer and the checksum verdict. The HTTP answer travels separately (``Answer``), so
neither is copied into the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lb_core.api import Answer


@dataclass(slots=True)
class Trace:
    call: str = ""
    integration: str = ""
    meeting_id: str = ""
    checksum: str = "n/a"  # ok | missing | mismatch | n/a (not checked: refused before, or no call)
    route: str = "local"  # local | routed | redirect | merged | cached
    server: str = ""
    result: str = ""  # the answer's messageKey or returncode, "redirect" for a join's 302
    decision: dict[str, Any] | None = None  # placement: reason, candidates with scores, failover, replaced
    backend: list[dict[str, Any]] = field(default_factory=list)  # one entry per backend call

    def decide(self, **facts: Any) -> None:
        """Add facts to the decision (placement explains, failover appends)."""
        self.decision = {**(self.decision or {}), **facts}


@dataclass(slots=True)
class Handled:
    """What ``Gateway.handle`` gives back: the HTTP answer and how it was reached."""

    answer: Answer
    trace: Trace

    @property
    def result(self) -> str:
        """The trace's result, or the HTTP status when no handler named one."""
        return self.trace.result or str(self.answer.status)
