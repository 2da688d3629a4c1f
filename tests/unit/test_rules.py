"""lb_core.rules, rules_rewrite and policy on their own: parsing rules, rewriting raw queries, counting participants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb_core.policy import ParticipantCounter, Policy
from lb_core.query import RawQuery
from lb_core.rules import EMPTY, Rule, RuleError, effective, parse_rules
from lb_core.rules_rewrite import apply


def rewrite(rules: dict, query: str, form: str | None = None, call: str = "create"):
    parsed = parse_rules({call: rules}).for_call(call)
    return apply(parsed, RawQuery.parse(query), RawQuery.parse(form) if form is not None else None)


# --- parsing -------------------------------------------------------------------------------------------

def test_every_operation_parses_and_round_trips():
    doc = {"create": {"welcome": {"default": "Hi"}, "record": {"override": False}, "logo": {"block": True},
                      "duration": {"max": 120}, "disabledFeatures": {"append": "chat, polls"}},
           "join": {"userdata-bbb_auto_join_audio": {"override": True}, "meta_Tag": {"default": 3}}}
    rules = parse_rules(doc)
    assert rules.create["record"] == Rule("record", "override", "false")  # YAML false is BBB's "false"
    assert rules.create["disabledFeatures"].value == ("chat", "polls")
    assert rules.join["meta_tag"].param == "meta_Tag" and rules.join["meta_tag"].value == "3"
    assert parse_rules(rules.to_doc()) == rules


@pytest.mark.parametrize(("doc", "key", "message"), [
    ({"create": {"duration": {"cap": 5}}}, "create.duration", "unknown operation 'cap'"),
    ({"create": {"duration": {"max": "lots"}}}, "create.duration", "max must be a whole number"),
    ({"create": {"duration": {"max": 2.5}}}, "create.duration", "max must be a whole number"),
    ({"create": {"duration": {"max": True}}}, "create.duration", "max must be a whole number"),
    ({"create": {"meta_mconflb-institution": {"override": "x"}}}, "create.meta_mconflb-institution", "reserved"),
    ({"join": {"META_MConfLB-guid": {"block": True}}}, "join.META_MConfLB-guid", "reserved"),
    ({"create": {"meetingID": {"override": "x"}}}, "create.meetingID", "cannot have a rule"),
    ({"join": {"checksum": {"block": True}}}, "join.checksum", "cannot have a rule"),
    ({"create": {"record": {"block": False}}}, "create.record", "block must be true"),
    ({"create": {"record": {"default": "a", "override": "b"}}}, "create.record", "must be one operation"),
    ({"create": {"record": "false"}}, "create.record", "must be one operation"),
    ({"create": {"x": {"append": []}}}, "create.x", "at least one item"),
    ({"create": {"x": {"default": None}}}, "create.x", "needs a value"),
    ({"create": {"meta_a": {"default": "1"}, "META_A": {"default": "2"}}}, "create.META_A", "duplicates"),
    ({"end": {}}, "end", "unknown call"),
])
def test_bad_rules_name_their_key(doc, key, message):
    with pytest.raises(RuleError) as caught:
        parse_rules(doc)
    assert caught.value.key == key and message in caught.value.message


def test_meta_parameters_are_allowed():
    assert parse_rules({"create": {"meta_course": {"default": "x"}}}).create["meta_course"].value == "x"


def test_an_integration_rule_replaces_the_global_one_for_that_parameter():
    global_rules = parse_rules({"create": {"duration": {"max": 60}, "welcome": {"default": "G"}}})
    own = parse_rules({"create": {"duration": {"override": "30"}}})
    merged = effective(global_rules, own)
    assert merged.create["duration"] == Rule("duration", "override", "30")
    assert merged.create["welcome"] == Rule("welcome", "default", "G")
    assert effective(EMPTY, own) == own


# --- the rewrite -----------------------------------------------------------------------------------

def test_default_sets_only_an_absent_parameter():
    assert rewrite({"welcome": {"default": "Hi there"}}, "name=A+b&meetingID=m").query.text == \
        "name=A+b&meetingID=m&welcome=Hi%20there"
    given = rewrite({"welcome": {"default": "Hi"}}, "welcome=Mine%21&x=1")
    assert given.query.text == "welcome=Mine%21&x=1" and not given.changed


def test_override_replaces_in_place_and_keeps_every_other_byte():
    out = rewrite({"record": {"override": "false"}}, "name=Caf%C3%A9+%28x%29&record=true&a=it's*&record=TRUE")
    assert out.query.text == "name=Caf%C3%A9+%28x%29&record=false&a=it's*"
    assert out.changed == (("record", "false"),)
    assert rewrite({"record": {"override": "false"}}, "record=false").changed == ()


def test_block_removes_every_occurrence():
    out = rewrite({"logo": {"block": True}}, "logo=http%3A%2F%2Fx&name=n&logo=y")
    assert out.query.text == "name=n"
    assert rewrite({"logo": {"block": True}}, "name=n").changed == ()


@pytest.mark.parametrize(("given", "expected"), [
    ("", "&duration=60"), ("duration=30", ""), ("duration=60", ""), ("duration=600", "duration=60"),
    ("duration=0", "duration=60"), ("duration=-5", "duration=60"), ("duration=abc", "duration=60"),
    ("duration=1e9", "duration=60"), ("duration=%2030", "duration=60"), ("duration=+30", "duration=60"),
    ("duration=030", ""),
])
def test_max_caps_sets_and_replaces_unlimited(given, expected):
    query = f"name=n&{given}" if given else "name=n"
    out = rewrite({"duration": {"max": 60}}, query)
    if not expected:
        assert out.query.text == query and not out.changed
    elif expected.startswith("&"):
        assert out.query.text == query + expected
    else:
        assert out.query.text == f"name=n&{expected}"


def test_append_adds_to_a_comma_list_without_duplicates():
    out = rewrite({"disabledFeatures": {"append": ["chat", "polls"]}}, "disabledFeatures=polls%2Cscreenshare&n=1")
    assert RawQuery(out.query.parts).pairs() == [("disabledFeatures", "polls,screenshare,chat"), ("n", "1")]
    absent = rewrite({"disabledFeatures": {"append": "chat"}}, "n=1")
    assert absent.query.text == "n=1&disabledFeatures=chat"
    same = rewrite({"disabledFeatures": {"append": "chat"}}, "disabledFeatures=chat")
    assert not same.changed


def test_meta_rules_match_keys_without_case():
    out = rewrite({"meta_Course": {"override": "B"}}, "META_COURSE=A&x=1")
    assert out.query.text == "meta_Course=B&x=1"


def test_a_changed_parameter_leaves_the_form_body_for_the_signed_query():
    out = rewrite({"record": {"override": "false"}, "welcome": {"default": "w"}}, "meetingID=m",
                  form="name=N%21&record=true&welcome=mine")
    assert out.query.text == "meetingID=m&record=false"
    assert out.body == b"name=N%21&welcome=mine"


def test_values_are_encoded_as_the_lb_encodes_its_own():
    out = rewrite({"welcome": {"override": "a&b=c d/é"}}, "x=1")
    assert RawQuery(out.query.parts).pairs() == [("x", "1"), ("welcome", "a&b=c d/é")]
    assert out.query.text == "x=1&welcome=a%26b%3Dc%20d%2F%C3%A9"


# --- participants ----------------------------------------------------------------------------------

def test_reservations_count_until_released_and_joins_until_a_later_poll():
    counter = ParticipantCounter()
    places = [counter.reserve("moodle", 3) for _ in range(5)]
    assert [p is not None for p in places] == [True, True, True, False, False]
    assert counter.count("moodle") == 3
    places[0].release()
    places[0].release()  # once only
    assert counter.count("moodle") == 2
    places[1].release()
    counter.joined("moodle", "bbb1", at=10.0)
    assert counter.count("moodle") == 2
    counter.polled("bbb1", asked_at=5.0, counts={"moodle": 4})  # asked before the join: it still counts
    assert counter.count("moodle") == 6  # 4 polled + 1 joined since + 1 under way
    counter.polled("bbb1", asked_at=11.0, counts={"moodle": 7})
    assert counter.count("moodle") == 8  # 7 polled + the reservation still under way
    places[2].release()
    counter.polled("bbb2", asked_at=12.0, counts={"moodle": 1, "other": 2})
    assert (counter.count("moodle"), counter.count("other")) == (8, 2)
    counter.forget_server("bbb1")
    assert counter.count("moodle") == 1
    assert counter.reserve("moodle", None) is not None  # no limit: always a place


# --- properties: whatever the query, only the ruled parameters change -------------------------------

_raw = st.text(alphabet="abcXYZ019%+*'()!~-_.=é ", max_size=12)
_keys = st.sampled_from(["duration", "record", "welcome", "meta_Tag", "META_tag", "name", "x", "dura%74ion"])
_rules = st.dictionaries(
    st.sampled_from(["duration", "record", "welcome", "meta_tag"]),
    st.one_of(st.just({"block": True}), st.builds(lambda v: {"default": v}, _raw.filter(bool)),
              st.builds(lambda v: {"override": v}, _raw.filter(bool)),
              st.builds(lambda n: {"max": n}, st.integers(1, 10_000)),
              st.builds(lambda v: {"append": v}, st.lists(st.sampled_from(["chat", "polls", "x y"]), min_size=1))),
    max_size=3)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(_keys, _raw), max_size=8), rules_doc=_rules)
def test_only_ruled_parameters_change_and_a_second_pass_changes_nothing(parts, rules_doc):
    query = RawQuery(tuple(f"{k}={v}" for k, v in parts))
    rules = parse_rules({"create": rules_doc}).create
    out = apply(rules, query)
    ruled = set(rules)

    def key(part: str) -> str:
        decoded = RawQuery((part,)).pairs()[0][0] if part else ""
        return decoded.lower() if decoded.lower().startswith("meta_") else decoded

    kept = [p for p in query.parts if key(p) not in ruled]
    assert [p for p in out.query.parts if key(p) not in ruled] == kept  # same bytes, same order
    for match in ruled:
        assert sum(1 for p in out.query.parts if key(p) == match) <= 1
    again = apply(rules, out.query)
    assert again.query == out.query and not again.changed


def test_the_policy_follows_changed_integrations_and_global_rules():
    from lb_core.config_sections import IntegrationConfig

    policy = Policy(parse_rules({"create": {"welcome": {"default": "G"}}}))
    moodle = IntegrationConfig(name="moodle", secret="s" * 8, max_duration_minutes=30)
    assert policy.rules_for(moodle).to_doc() == {"create": {"welcome": {"default": "G"}, "duration": {"max": 30}}}
    changed = IntegrationConfig(name="moodle", secret="s" * 8, max_duration_minutes=30,
                                rules={"create": {"welcome": {"block": True}}})  # as the admin API makes it
    assert policy.rules_for(changed).create["welcome"].operation == "block"
    policy.set_global_rules(EMPTY)
    assert policy.rules_for(changed).to_doc() == {"create": {"welcome": {"block": True}, "duration": {"max": 30}}}
