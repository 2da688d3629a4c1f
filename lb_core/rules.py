"""Per-integration rules: what an operator changes in an integration's create and join calls.

A rule names one parameter of one call (``create`` or ``join``) and one operation on it:

- ``default: V``  set it when the call does not have it;
- ``override: V`` always set it, replacing the call's value;
- ``block: true`` remove it;
- ``max: N``      cap a whole number, and set it when absent (a value that is not a whole number, or is
                  0 or less, which BBB reads as "no limit" for ``duration`` and ``maxParticipants``, becomes N);
- ``append: V``   add items to a comma list (``disabledFeatures``), without duplicates.

Global rules apply to every integration; an integration's rule for a parameter replaces the global one.
This file is the rules themselves: their model and how they are read from the config file, the admin
API and the store. Applying them to a call is ``lb_core.rules_rewrite``; what the handlers consult
(rules in force, participant limits, refusals) is ``lb_core.policy``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

CALLS = ("create", "join")
OPERATIONS = ("default", "override", "block", "max", "append")
RESERVED_META_PREFIX = "meta_mconflb-"
# Parameters a rule may not touch: the LB routes by them, verifies by them, or owns them.
PROTECTED = {"create": frozenset({"meetingID", "checksum", "preferredServer"}),
             "join": frozenset({"meetingID", "checksum"})}
_PARAM = re.compile(r"^[A-Za-z0-9_.:\-\[\]]{1,128}$")
MAX_VALUE_CHARS = 8192


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


def match_key(param: str) -> str:
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
        return self._with(call, {**self.for_call(call), match_key(rule.param): rule})

    def without(self, call: str, param: str) -> RuleSet:
        rules = dict(self.for_call(call))
        rules.pop(match_key(param), None)
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
            match = match_key(rule.param)
            if match in rules:
                raise RuleError(f"{call}.{param}", f"duplicates the rule for {rules[match].param}")
            rules[match] = rule
        by_call[call] = rules
    return RuleSet(create=by_call.get("create", {}), join=by_call.get("join", {}))


def effective(global_rules: RuleSet, own: RuleSet) -> RuleSet:
    """An integration's rules in force: its own, and the global ones for parameters it has none for."""
    return own.merged_over(global_rules) if global_rules else own
