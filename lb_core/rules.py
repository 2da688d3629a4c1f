"""Per-integration rules and limits: what an operator changes in an integration's create and join calls.

A rule names one parameter of one call (``create`` or ``join``) and one operation on it:

- ``default: V``  set it when the call does not have it;
- ``override: V`` always set it, replacing the call's value;
- ``block: true`` remove it;
- ``max: N``      cap a whole number, and set it when absent (a value that is not a whole number, or is
                  0 or less, which BBB reads as "no limit" for ``duration`` and ``maxParticipants``, becomes N);
- ``append: V``   add items to a comma list (``disabledFeatures``), without duplicates.

Global rules apply to every integration; an integration's rule for a parameter replaces the global one.
The rewrite edits the raw query (``RawQuery``): parameters no rule touches keep their exact bytes, a
touched one is written once, where it first was (or at the end). Nothing here does I/O; the gateway
re-signs the rewritten query for the backend as it does every call.

``ParticipantCounter`` keeps, per integration, the participants the last polls saw in its meetings plus
the joins since those polls and the joins under way, so a participant limit holds under concurrent joins.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from lb_core.query import RawQuery, encode_value

if TYPE_CHECKING:
    from lb_core.api import Call
    from lb_core.config import IntegrationConfig
    from lb_core.errors import ApiError
    from lb_core.meetings import MeetingRecord
    from lb_core.pool import Server

CALLS = ("create", "join")
LIMIT_KINDS = ("meetings", "participants", "record")  # what refusals by an integration's limits count as
OPERATIONS = ("default", "override", "block", "max", "append")
RESERVED_META_PREFIX = "meta_mconflb-"
# Parameters a rule may not touch: the LB routes by them, verifies by them, or owns them.
PROTECTED = {"create": frozenset({"meetingID", "checksum", "preferredServer"}),
             "join": frozenset({"meetingID", "checksum"})}
_PARAM = re.compile(r"^[A-Za-z0-9_.:\-\[\]]{1,128}$")
MAX_VALUE_CHARS = 8192
# Plain digits only: a value bbb-web might read differently (" 30", "+30", "3e1") is replaced, never kept.
_WHOLE = re.compile(r"^\d{1,18}$")


class RuleError(ValueError):
    """A rule that cannot be used; ``key`` is where it sits below ``rules`` (``create.duration``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Rule:
    """One operation on one parameter; ``value`` is text, a whole number (max) or list items (append)."""

    param: str
    operation: str
    value: str | int | tuple[str, ...] | None = None

    def to_doc(self) -> dict[str, Any]:
        value: Any = True if self.operation == "block" else (
            list(self.value) if isinstance(self.value, tuple) else self.value)
        return {self.operation: value}


def _match_key(param: str) -> str:
    """``meta_*`` keys are compared without case, as BBB stores metadata lower-cased; others exactly."""
    return param.lower() if param.lower().startswith("meta_") else param


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one scope (global or one integration): call -> match key -> rule."""

    create: Mapping[str, Rule] = field(default_factory=dict)
    join: Mapping[str, Rule] = field(default_factory=dict)

    def for_call(self, call: str) -> Mapping[str, Rule]:
        return self.create if call == "create" else self.join if call == "join" else {}

    def __bool__(self) -> bool:
        return bool(self.create or self.join)

    def __iter__(self) -> Iterator[tuple[str, Rule]]:
        for call in CALLS:
            for rule in self.for_call(call).values():
                yield call, rule

    def to_doc(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The form the config file, the admin API and the store use (parse_rules reads it back)."""
        return {call: {r.param: r.to_doc() for r in self.for_call(call).values()}
                for call in CALLS if self.for_call(call)}

    def with_rule(self, call: str, rule: Rule) -> RuleSet:
        return self._with(call, {**self.for_call(call), _match_key(rule.param): rule})

    def without(self, call: str, param: str) -> RuleSet:
        rules = dict(self.for_call(call))
        rules.pop(_match_key(param), None)
        return self._with(call, rules)

    def _with(self, call: str, rules: dict[str, Rule]) -> RuleSet:
        return RuleSet(create=rules, join=self.join) if call == "create" else RuleSet(create=self.create, join=rules)

    def merged_over(self, base: RuleSet) -> RuleSet:
        """These rules over ``base``: for each parameter, a rule here replaces the one in ``base``."""
        return RuleSet(create={**base.create, **self.create}, join={**base.join, **self.join})


EMPTY = RuleSet()


def _text(value: Any, key: str, operation: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # YAML's false is BBB's "false"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise RuleError(key, f"{operation} must be a text, number or true/false value")
    if len(value) > MAX_VALUE_CHARS:
        raise RuleError(key, f"{operation} value is longer than {MAX_VALUE_CHARS} characters")
    return value


def _items(value: Any, key: str) -> tuple[str, ...]:
    raw = value.split(",") if isinstance(value, str) else value
    if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
        raise RuleError(key, "append must be a comma list or a list of texts")
    items = tuple(dict.fromkeys(item.strip() for item in raw if item.strip()))
    if not items:
        raise RuleError(key, "append needs at least one item")
    if sum(len(item) + 1 for item in items) > MAX_VALUE_CHARS:
        raise RuleError(key, f"append value is longer than {MAX_VALUE_CHARS} characters")
    return items


def parse_rule(call: str, param: Any, spec: Any) -> Rule:
    """One parameter's rule from its config form (``{max: 120}``); RuleError names ``call.param``."""
    key = f"{call}.{param}"
    if not isinstance(param, str) or not _PARAM.match(param):
        raise RuleError(f"{call}.{param!s:.64}", "is not a parameter name (letters, digits, '_', '-', '.', ':')")
    if param.lower().startswith(RESERVED_META_PREFIX):
        raise RuleError(key, "meta_mconflb-* parameters are reserved for the load balancer")
    if param in PROTECTED[call]:
        raise RuleError(key, f"{param} cannot have a rule: the load balancer routes and verifies {call} by it")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise RuleError(key, f"must be one operation: {', '.join(OPERATIONS)} (e.g. {{max: 120}})")
    (operation, value), = spec.items()
    if operation not in OPERATIONS:
        raise RuleError(key, f"unknown operation {str(operation)[:32]!r}: use {', '.join(OPERATIONS)}")
    if operation == "block":
        if value is not True:
            raise RuleError(key, "block must be true")
        return Rule(param, operation)
    if operation == "max":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RuleError(key, "max must be a whole number of at least 1")
        return Rule(param, operation, value)
    if operation == "append":
        return Rule(param, operation, _items(value, key))
    if value is None:
        raise RuleError(key, f"{operation} needs a value")
    return Rule(param, operation, _text(value, key, operation))


def parse_rules(data: Any) -> RuleSet:
    """A ``rules:`` mapping (``{create: {param: {op: value}}, join: {...}}``) as a RuleSet."""
    if isinstance(data, RuleSet):
        return data
    if data is None:
        return EMPTY
    if not isinstance(data, dict):
        raise RuleError("", "must be a mapping with create and/or join")
    by_call: dict[str, dict[str, Rule]] = {}
    for call, params in data.items():
        if call not in CALLS:
            raise RuleError(str(call)[:64], "unknown call: rules are for create and join")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RuleError(call, "must be a mapping of parameter: {operation: value}")
        rules: dict[str, Rule] = {}
        for param, spec in params.items():
            rule = parse_rule(call, param, spec)
            match = _match_key(rule.param)
            if match in rules:
                raise RuleError(f"{call}.{param}", f"duplicates the rule for {rules[match].param}")
            rules[match] = rule
        by_call[call] = rules
    return RuleSet(create=by_call.get("create", {}), join=by_call.get("join", {}))


# --- applying rules to a call -----------------------------------------------------------------------

def _whole(value: str) -> int | None:
    return int(value) if _WHOLE.match(value) else None


def _result(rule: Rule, values: list[str]) -> str | None:
    """The parameter's value after the rule (None: removed), from its values in the call ([] when absent)."""
    op, current = rule.operation, (values[0] if values else None)
    if op == "block":
        return None
    if op == "override":
        return str(rule.value)
    if op == "default":
        return current if current is not None else str(rule.value)
    if op == "max":
        assert isinstance(rule.value, int)
        number = _whole(current) if current is not None else None
        return current if number is not None and 0 < number <= rule.value else str(rule.value)
    assert isinstance(rule.value, tuple)  # append
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return ",".join(dict.fromkeys([*items, *rule.value]))


def _decode(text: str) -> str:
    """As RawQuery decodes a key or value; most keys need no decoding at all."""
    return unquote_plus(text, errors="replace") if "%" in text or "+" in text else text


def _keyed(parts: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(part, the key rules match it by, raw value) for each part; empty parts keep an empty key."""
    keyed = []
    for part in parts:
        key, _, value = part.partition("=")
        keyed.append((part, _match_key(_decode(key)) if part else "", value))
    return keyed


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A call after its rules: the query to sign, the form body to forward (if any), what was changed."""

    query: RawQuery
    body: bytes | None
    changed: tuple[tuple[str, str | None], ...]  # (parameter, its value now or None when removed)


def apply(rules: Mapping[str, Rule], query: RawQuery, form: RawQuery | None = None) -> Rewrite:
    """Apply ``rules`` to a call's signed ``query`` (and its unsigned ``form`` body, when it has one).

    The value a rule sees is the call's, wherever it came from (query first, then form, as bbb-web
    reads them). A touched parameter is written into the query once, where it first appeared, and
    removed from the form; a parameter that ends as it was, written once, is not touched at all.
    Each key is decoded once; values only of the parameters that have a rule.
    """
    if not rules:
        return Rewrite(query, None, ())
    in_query = _keyed(query.parts)
    in_form = _keyed(form.parts) if form is not None else []
    found: dict[str, list[str]] = {}
    for _, match, value in (*in_query, *in_form):
        if match in rules:
            found.setdefault(match, []).append(_decode(value))
    changes: dict[str, str | None] = {}
    for match, rule in rules.items():
        values = found.get(match, [])
        after = _result(rule, values)
        if after is not None and len(values) == 1 and values[0] == after:
            continue  # unchanged: the client's bytes stay where they are
        if after is None and not values:
            continue
        changes[match] = after
    if not changes:
        return Rewrite(query, None, ())
    parts: list[str] = []
    written: set[str] = set()
    for part, match, _ in in_query:
        if match not in changes:
            parts.append(part)
            continue
        if match not in written and changes[match] is not None:
            parts.append(f"{encode_value(rules[match].param)}={encode_value(changes[match])}")
        written.add(match)
    for match, after in changes.items():
        if match not in written and after is not None:
            parts.append(f"{encode_value(rules[match].param)}={encode_value(after)}")
    body = None
    if any(match in changes for _, match, _ in in_form):
        body = "&".join(part for part, match, _ in in_form if match not in changes).encode()
    return Rewrite(RawQuery(tuple(parts)), body, tuple((rules[m].param, after) for m, after in changes.items()))


def effective(global_rules: RuleSet, own: RuleSet) -> RuleSet:
    """An integration's rules in force: its own, and the global ones for parameters it has none for."""
    return own.merged_over(global_rules) if global_rules else own


# --- participant limits -------------------------------------------------------------------------

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


# --- the hook the create and join handlers call -------------------------------------------------

FORM = "application/x-www-form-urlencoded"


def rewrite_call(call: Call, rules: RuleSet) -> Call:
    """``call`` with its rules applied (the same object when no rule changes it).

    A form body that travels beside a signed query is part of the call too: a parameter a rule
    changes is taken out of it and written into the query, which the backend's checksum covers.
    """
    for_call = rules.for_call(call.name)
    if not for_call:
        return call
    form = RawQuery.parse(call.body.decode("utf-8")) if call.body and call.content_type == FORM else None
    rewrite = apply(for_call, call.query, form)
    if not rewrite.changed:
        return call
    body = rewrite.body if rewrite.body is not None else call.body
    changed = {_match_key(param) for param, _ in rewrite.changed}
    pairs = [pair for pair in call.pairs if _match_key(pair[0]) not in changed]
    pairs += [(param, value) for param, value in rewrite.changed if value is not None]
    return replace(call, query=rewrite.query, pairs=pairs, body=body or None)


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

    def refused(self, integration: str, kind: str, error: ApiError) -> ApiError:
        """Count a refusal by one of the integration's limits (``kind`` in LIMIT_KINDS) and answer it."""
        self.limit_hits[(integration, kind)] += 1
        return error

    def join_place(self, integration: IntegrationConfig, moderator: bool) -> Reservation:
        """A place for a joining user under ``max_participants``, or BBB's permissionDenied to raise."""
        from lb_core import errors  # here, not at the top: lb_core.errors is not needed to read rules

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
