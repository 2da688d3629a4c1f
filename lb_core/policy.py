"""What the create and join handlers consult about an integration: its rules in force and its limits.

``ParticipantCounter`` keeps, per integration, the participants the last polls saw in its meetings plus
the joins since those polls and the joins under way, so a participant limit holds under concurrent joins.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from lb_core import errors
from lb_core.rules import EMPTY, RuleSet, effective
from lb_core.rules_rewrite import rewrite_call

if TYPE_CHECKING:
    from lb_core.api import Call
    from lb_core.config_sections import IntegrationConfig
    from lb_core.meetings import MeetingRecord
    from lb_core.pool import Server

LIMIT_KINDS = ("meetings", "participants", "record")  # what refusals by an integration's limits count as


class Reservation:
    """A join under way: it counts against its integration until released (then, if it went through,
    the caller notes it with ``ParticipantCounter.joined`` in the same step)."""

    __slots__ = ("_counter", "_done", "integration")

    def __init__(self, counter: ParticipantCounter, integration: str) -> None:
        self._counter = counter
        self.integration = integration
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._counter._in_flight[self.integration] -= 1


class ParticipantCounter:
    """Participants per integration: the last polls' counts, joins since those polls, joins under way.

    Polls are per server and at different times, so joins are kept per server with the (monotonic)
    time they went through; a poll of a server that started after a join covers it. Every operation
    is O(1) amortised: nothing here walks all meetings on a join.
    """

    def __init__(self) -> None:
        self._polled: dict[str, Counter[str]] = {}  # server -> integration -> participants seen
        self._polled_total: Counter[str] = Counter()
        self._joins: dict[str, deque[tuple[float, str]]] = {}  # server -> (time, integration)
        self._recent: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()

    def count(self, integration: str) -> int:
        return self._polled_total[integration] + self._recent[integration] + self._in_flight[integration]

    def reserve(self, integration: str, limit: int | None) -> Reservation | None:
        """A place for one more participant, or None when ``limit`` is reached (no limit: always one)."""
        if limit is not None and self.count(integration) >= limit:
            return None
        self._in_flight[integration] += 1
        return Reservation(self, integration)

    def joined(self, integration: str, server: str, at: float) -> None:
        """A join went through to ``server`` at ``at`` (monotonic): it counts until a later poll covers it."""
        self._joins.setdefault(server, deque()).append((at, integration))
        self._recent[integration] += 1

    def polled(self, server: str, asked_at: float, counts: Mapping[str, int]) -> None:
        """A poll of ``server`` asked at ``asked_at`` saw ``counts`` (integration -> participants)."""
        old = self._polled.pop(server, Counter())
        self._polled_total.subtract(old)
        new = Counter({k: v for k, v in counts.items() if v > 0})
        if new:
            self._polled[server] = new
        self._polled_total.update(new)
        joins = self._joins.get(server)
        while joins and joins[0][0] < asked_at:
            _, integration = joins.popleft()
            self._recent[integration] -= 1
        self._tidy()

    def forget_server(self, server: str) -> None:
        self._polled_total.subtract(self._polled.pop(server, Counter()))
        for _, integration in self._joins.pop(server, deque()):
            self._recent[integration] -= 1
        self._tidy()

    def _tidy(self) -> None:
        for table in (self._polled_total, self._recent):
            for key in [k for k, v in table.items() if v <= 0]:
                del table[key]

    def integrations(self) -> Iterable[str]:
        return set(self._polled_total) | set(self._recent) | {k for k, v in self._in_flight.items() if v > 0}


class Policy:
    """What the create and join handlers consult: each integration's rules in force, its participants,
    and the calls its limits refused (for /metrics and the dashboard). No I/O; operators' changes go
    to the global rules through ``set_global_rules``; an integration's own come with it (the frozen
    IntegrationConfig a call carries), so nothing here needs telling when an integration changes."""

    def __init__(self, global_rules: RuleSet = EMPTY) -> None:
        self.global_rules = global_rules
        self.participants = ParticipantCounter()
        self.limit_hits: Counter[tuple[str, str]] = Counter()  # (integration, kind) -> refusals
        self._rules: dict[str, tuple[IntegrationConfig, RuleSet]] = {}  # name -> (as of, rules in force)

    def set_global_rules(self, rules: RuleSet) -> None:
        self.global_rules = rules
        self._rules.clear()

    def rules_for(self, integration: IntegrationConfig) -> RuleSet:
        """Its rules in force, worked out once per version of the integration (a changed one is a new object)."""
        cached = self._rules.get(integration.name)
        if cached is None or cached[0] is not integration:
            cached = self._rules[integration.name] = (integration, effective(self.global_rules, integration.own_rules))
        return cached[1]

    def rewrite(self, call: Call) -> Call:
        """The call as its integration's rules make it (the same object when none applies)."""
        return rewrite_call(call, self.rules_for(call.integration))

    def refused(self, integration: str, kind: str, error: errors.ApiError) -> errors.ApiError:
        """Count a refusal by one of the integration's limits (``kind`` in LIMIT_KINDS) and answer it."""
        self.limit_hits[(integration, kind)] += 1
        return error

    def join_place(self, integration: IntegrationConfig, moderator: bool) -> Reservation:
        """A place for a joining user under ``max_participants``, or BBB's permissionDenied to raise."""
        exempt = moderator and not integration.limit_moderators
        place = self.participants.reserve(integration.name, None if exempt else integration.max_participants)
        if place is None:
            raise self.refused(integration.name, "participants", errors.permission_denied_participants())
        return place

    def polled(self, server: Server, records: Iterable[MeetingRecord], asked_at: float) -> None:
        """A poll of ``server`` asked at ``asked_at`` (monotonic) is in: the participants of the meetings the LB
        placed there (``records``), per integration."""
        counts: Counter[str] = Counter()
        for record in records:
            if (load := server.meetings.get(record.meeting_id)) is not None:
                counts[record.integration] += load.participants
        self.participants.polled(server.name, asked_at, counts)

    def hits_of(self, integration: str) -> dict[str, int]:
        return {kind: count for kind in LIMIT_KINDS if (count := self.limit_hits[(integration, kind)])}
