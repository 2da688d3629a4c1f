"""Applying rules to a call: the raw query (and form body) a backend receives.

The rewrite edits the raw query (``RawQuery``): parameters no rule touches keep their exact bytes, a
touched one is written once, where it first was (or at the end). Nothing here does I/O; the gateway
re-signs the rewritten query for the backend as it does every call. The rules themselves are
``lb_core.rules``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from lb_core.api import FORM
from lb_core.query import RawQuery, encode_value
from lb_core.rules import Rule, RuleSet, match_key

if TYPE_CHECKING:
    from lb_core.api import Call

# Plain digits only: a value bbb-web might read differently (" 30", "+30", "3e1") is replaced, never kept.
_WHOLE = re.compile(r"^\d{1,18}$")


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
        keyed.append((part, match_key(_decode(key)) if part else "", value))
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
    changed = {match_key(param) for param, _ in rewrite.changed}
    pairs = [pair for pair in call.pairs if match_key(pair[0]) not in changed]
    pairs += [(param, value) for param, value in rewrite.changed if value is not None]
    return replace(call, query=rewrite.query, pairs=pairs, body=body or None)
