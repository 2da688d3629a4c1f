"""Rules and limits per integration, in process: what the backend receives, what the integration is told."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from yarl import URL

from lb_core import checksum
from lb_core.controls import ControlError

MOODLE = {"name": "moodle", "secret": "moodle-secret"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def moodle(**settings: Any) -> list[dict[str, Any]]:
    return [{**MOODLE, **settings}]


def sent(lb) -> list[dict[str, Any]]:
    """Every call the LB makes to a backend from now on: call name, query as signed, body."""
    calls: list[dict[str, Any]] = []
    backend = lb.lb.backend
    original = backend.call

    async def spy(server, call, query, **kwargs):  # type: ignore[no-untyped-def]
        calls.append({"server": server.name, "call": call, "query": query, "body": kwargs.get("body")})
        return await original(server, call, query, **kwargs)

    backend.call = spy
    return calls


async def follow(location: str) -> int:
    """Request a redirect's target as a browser does: its bytes as they are (yarl would decode %28)."""
    async with aiohttp.ClientSession() as session, session.get(URL(location, encoded=True),
                                                               allow_redirects=False) as response:
        return response.status


def last_create(sim, meeting_id: str) -> dict[str, Any]:
    return [r for r in sim.requests(sim.server_of(meeting_id)) if r["call"] == "create"][-1]


def client_part(raw_query: str) -> str:
    """What the LB forwards of the client's query: everything before its own metadata."""
    return raw_query.split("&meta_mconflb-guid=")[0]


async def test_each_operation_on_a_get_create(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"create": {
        "welcome": {"default": "Welcome!"}, "record": {"override": False}, "logo": {"block": True},
        "duration": {"max": 90}, "disabledFeatures": {"append": ["chat", "polls"]},
        "meta_Course": {"override": "managed"}}}))
    query = ("name=Caf%C3%A9+%28A%29&meetingID=ops-1&record=true&logo=http%3A%2F%2Fx%2Fl.png&duration=600"
             "&attendeePW=it's*&disabledFeatures=polls%2Clearning&META_course=mine&moderatorPW=mp")
    reply = await lb.http(lb.sign("create", query, secret="moodle-secret", algorithm="sha1"))
    assert reply.field("returncode") == "SUCCESS", reply.text
    forwarded = last_create(sim, "ops-1")
    assert forwarded["checksum_ok"], "the rewritten call must be signed for the backend"
    assert client_part(forwarded["raw_query"]) == (
        "name=Caf%C3%A9+%28A%29&meetingID=ops-1&record=false&duration=90"
        "&attendeePW=it's*&disabledFeatures=polls%2Clearning%2Cchat&meta_Course=managed&moderatorPW=mp"
        "&welcome=Welcome%21")
    meeting = sim.meeting("bbb1", "ops-1")
    assert (meeting.record, meeting.duration, meeting.metadata["course"]) == (False, 90, "managed")


async def test_rules_that_change_nothing_leave_the_query_as_signed(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"create": {
        "welcome": {"default": "W"}, "duration": {"max": 90}, "logo": {"block": True}}}))
    query = "meetingID=same&name=A+%21b&welcome=Mine%2C+really&duration=45"
    await lb.call("create", query, secret="moodle-secret")
    assert client_part(last_create(sim, "same")["raw_query"]) == query


async def test_a_form_post_create_signed_over_its_body_is_rewritten(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"create": {
        "record": {"override": "false"}, "duration": {"max": 30}}}))
    calls = sent(lb)
    body = "meetingID=post-1&name=Post+%281%29&record=true&attendeePW=a%2Ab"
    signed = checksum.sign("create", body, "moodle-secret", "sha256")
    reply = await lb.http(lb.api + "create", method="POST", data=signed.encode(), headers=FORM)
    assert reply.field("returncode") == "SUCCESS", reply.text
    create = [c for c in calls if c["call"] == "create"][-1]
    assert client_part(create["query"]) == "meetingID=post-1&name=Post+%281%29&record=false&attendeePW=a%2Ab" \
        "&duration=30"
    assert last_create(sim, "post-1")["checksum_ok"]
    assert (sim.meeting("bbb1", "post-1").record, sim.meeting("bbb1", "post-1").duration) == (False, 30)


async def test_a_form_body_beside_a_signed_query_loses_the_parameters_rules_change(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"create": {"record": {"override": "false"}}}))
    calls = sent(lb)
    url = lb.sign("create", "meetingID=post-2&name=Two", secret="moodle-secret")
    reply = await lb.http(url, method="POST", data=b"record=true&welcome=Hi+%21", headers=FORM)
    assert reply.field("returncode") == "SUCCESS", reply.text
    create = [c for c in calls if c["call"] == "create"][-1]
    assert client_part(create["query"]) == "meetingID=post-2&name=Two&record=false"
    assert create["body"] == b"welcome=Hi+%21"  # untouched parameters keep their bytes
    assert last_create(sim, "post-2")["checksum_ok"] and sim.meeting("bbb1", "post-2").record is False


async def test_an_integration_rule_replaces_the_global_one(lb_factory, sim):
    lb = await lb_factory(servers=[0], rules={"create": {"duration": {"max": 60}, "welcome": {"override": "G"}}},
                          integrations=moodle(rules={"create": {"duration": {"max": 240}}}))
    await lb.call("create", {"meetingID": "g-default", "name": "d room", "duration": "500"})
    await lb.call("create", {"meetingID": "g-moodle", "name": "m room", "duration": "500"}, secret="moodle-secret")
    assert sim.meeting("bbb1", "g-default").duration == 60
    assert sim.meeting("bbb1", "g-moodle").duration == 240
    moodle_query = dict(parse_qsl(last_create(sim, "g-moodle")["raw_query"]))
    assert moodle_query["welcome"] == "G"  # the global rule for another parameter still applies


async def test_max_duration_minutes_caps_duration(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(max_duration_minutes=45))
    await lb.call("create", {"meetingID": "long", "name": "L room"}, secret="moodle-secret")
    await lb.call("create", {"meetingID": "short", "name": "S room", "duration": "20"}, secret="moodle-secret")
    assert (sim.meeting("bbb1", "long").duration, sim.meeting("bbb1", "short").duration) == (45, 20)


async def test_join_rules_apply_to_the_redirect_and_to_redirect_false(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"join": {
        "userdata-bbb_auto_join_audio": {"override": "true"}, "avatarURL": {"block": True},
        "userdata-bbb_skip_check_audio": {"default": "true"}}}))
    await lb.call("create", {"meetingID": "jr", "name": "J room", "moderatorPW": "mp", "attendeePW": "ap"},
                  secret="moodle-secret")
    query = "meetingID=jr&fullName=Ana+%C3%A9&password=ap&avatarURL=http%3A%2F%2Fa&userdata-bbb_auto_join_audio=false"
    redirect = await lb.http(lb.sign("join", query, secret="moodle-secret"))
    assert redirect.status == 302
    location = redirect.headers["Location"]
    signed_query = urlsplit(location).query.rsplit("&checksum=", 1)[0]
    assert signed_query == ("meetingID=jr&fullName=Ana+%C3%A9&password=ap&userdata-bbb_auto_join_audio=true"
                            "&userdata-bbb_skip_check_audio=true")
    followed = await lb.fetch(location)
    assert followed.status == 302, followed.text  # the backend accepted the re-signed join
    proxied = await lb.http(lb.sign("join", query + "&redirect=false", secret="moodle-secret"))
    assert proxied.field("returncode") == "SUCCESS", proxied.text
    backend_join = [r for r in sim.requests("bbb1") if r["call"] == "join"][-1]
    assert backend_join["checksum_ok"]
    assert backend_join["raw_query"].startswith("meetingID=jr&fullName=Ana+%C3%A9&password=ap&"
                                                "userdata-bbb_auto_join_audio=true&redirect=false&")
    attendee = sim.meeting("bbb1", "jr").attendees[-1]
    assert attendee.custom == {"bbb_auto_join_audio": "true", "bbb_skip_check_audio": "true"}


async def test_can_record_false_still_refuses_and_a_rule_silently_turns_recording_off(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=[
        {**MOODLE, "can_record": False},
        {"name": "quiet", "secret": "quiet-secret", "rules": {"create": {"record": {"override": "false"}}}}])
    refused = await lb.call("create", {"meetingID": "rec-1", "name": "R room", "record": "true"}, secret="moodle-secret")
    assert (refused.field("messageKey"), refused.field("message")) == (
        "permissionDenied", "This application is not allowed to record meetings.")
    quiet = await lb.call("create", {"meetingID": "rec-2", "name": "R room", "record": "true"}, secret="quiet-secret")
    assert quiet.field("returncode") == "SUCCESS" and sim.meeting("bbb1", "rec-2").record is False
    assert lb.lb.policy.limit_hits[("moodle", "record")] == 1


async def test_fifty_concurrent_joins_against_a_limit_of_twenty(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(max_participants=20))
    await lb.call("create", {"meetingID": "crowd", "name": "C room", "attendeePW": "ap", "moderatorPW": "mp"},
                  secret="moodle-secret")

    async def join(i: int):  # type: ignore[no-untyped-def]
        return await lb.call("join", {"meetingID": "crowd", "fullName": f"U{i}", "password": "ap",
                                      "redirect": "false"}, secret="moodle-secret")

    replies = await asyncio.gather(*(join(i) for i in range(50)))
    keys = [r.field("messageKey") for r in replies]
    assert keys.count("successfullyJoined") == 20
    refused = [r for r in replies if r.field("returncode") == "FAILED"]
    assert len(refused) == 30
    assert all(r.status == 200 and r.field("messageKey") == "permissionDenied" and
               r.field("message") == "This application is not allowed to have any more participants."
               for r in refused)
    assert len(sim.meeting("bbb1", "crowd").attendees) == 20
    assert lb.lb.policy.limit_hits[("moodle", "participants")] == 30
    # A redirect join over the limit is refused too, never redirected.
    over = await lb.call("join", {"meetingID": "crowd", "fullName": "Late", "password": "ap"},
                         secret="moodle-secret")
    assert over.status == 200 and over.field("messageKey") == "permissionDenied" and "Location" not in over.headers


async def test_the_limit_counts_polled_participants_plus_joins_since(lb_factory, sim):
    lb = await lb_factory(servers=[0, 1], integrations=moodle(max_participants=10))
    for name in ("p1", "p2"):
        await lb.call("create", {"meetingID": name, "name": "Room " + name, "attendeePW": "ap"}, secret="moodle-secret")
    await lb.call("create", {"meetingID": "other", "name": "o room", "attendeePW": "ap"})  # the default integration's
    sim.participants(sim.server_of("p1"), "p1", 4)
    sim.participants(sim.server_of("p2"), "p2", 3)
    sim.participants(sim.server_of("other"), "other", 50)
    await lb.poll()
    assert lb.lb.policy.participants.count("moodle") == 7

    async def join(meeting: str, **extra: str):  # type: ignore[no-untyped-def]
        return await lb.call("join", {"meetingID": meeting, "fullName": "x", "password": "ap", **extra},
                             secret="moodle-secret")

    assert [(await join("p1")).status for _ in range(3)] == [302, 302, 302]
    assert (await join("p2")).field("messageKey") == "permissionDenied"
    sim.participants(sim.server_of("p1"), "p1", 1)  # people left; the next poll sees it
    sim.participants(sim.server_of("p2"), "p2", 0)
    await lb.poll()
    assert lb.lb.policy.participants.count("moodle") == 1
    assert (await join("p2")).status == 302
    assert (await lb.call("join", {"meetingID": "other", "fullName": "y", "password": "ap"})).status == 302


async def test_moderators_can_be_exempted(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=[
        {**MOODLE, "max_participants": 1, "limit_moderators": False},
        {"name": "strict", "secret": "strict-secret", "max_participants": 1}])
    for secret in ("moodle-secret", "strict-secret"):
        await lb.call("create", {"meetingID": f"m-{secret}", "name": "M room", "attendeePW": "ap", "moderatorPW": "mp"},
                      secret=secret)

    async def join(secret: str, **params: str) -> str:
        reply = await lb.call("join", {"meetingID": f"m-{secret}", "fullName": "x", **params}, secret=secret)
        return str(reply.status) if reply.status == 302 else reply.field("messageKey")

    assert await join("moodle-secret", password="ap") == "302"
    assert await join("moodle-secret", password="ap") == "permissionDenied"
    assert await join("moodle-secret", password="mp") == "302"
    assert await join("moodle-secret", role="MODERATOR") == "302"
    assert await join("strict-secret", password="mp") == "302"
    assert await join("strict-secret", password="mp") == "permissionDenied"


async def test_rules_and_limits_change_at_run_time_and_survive_a_restart(lb_factory, sim):
    lb = await lb_factory(servers=[0], store="tinydb", integrations=moodle())
    rules, integrations = lb.lb.rule_controls, lb.lb.integration_controls
    shown = await rules.change_rules("moodle", {"create": {"duration": {"max": 15}, "welcome": {"default": "x"}}})
    assert shown["rules"] == {"create": {"duration": {"max": 15}, "welcome": {"default": "x"}}}
    await rules.change_rules("moodle", {"create": {"welcome": None}})
    await rules.change_rules(None, {"join": {"userdata-bbb_listen_only_mode": {"override": "false"}}})
    await integrations.put_integration({"name": "moodle", "max_participants": 5, "limit_moderators": False})
    with pytest.raises(ControlError, match=r"rules\.create\.meta_mconflb-guid: .*reserved"):
        await rules.change_rules("moodle", {"create": {"meta_mconflb-guid": {"override": "x"}}})
    with pytest.raises(ControlError, match="unknown operation"):
        await rules.change_rules(None, {"create": {"duration": {"maximum": 3}}})
    await lb.restart()
    moodle_now = next(i for i in lb.lb.integration_controls.list_integrations() if i["name"] == "moodle")
    assert moodle_now["rules"] == {"create": {"duration": {"max": 15}}}
    assert (moodle_now["max_participants"], moodle_now["limit_moderators"]) == (5, False)
    assert lb.lb.rule_controls.rules_of("moodle")["effective"] == {
        "create": {"duration": {"max": 15}}, "join": {"userdata-bbb_listen_only_mode": {"override": "false"}}}
    await lb.call("create", {"meetingID": "rt", "name": "R room", "duration": "100"}, secret="moodle-secret")
    assert sim.meeting("bbb1", "rt").duration == 15


async def test_reserved_meta_from_the_client_is_still_refused_with_rules(lb_factory, sim):
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"create": {"meta_a": {"default": "1"}}}))
    reply = await lb.call("create", urlencode({"meetingID": "rm", "name": "Room", "meta_mconflb-institution": "x"}),
                          secret="moodle-secret")
    assert reply.field("messageKey") == "invalidParameters"
    assert all("rm" not in sim.meetings(s["name"]) for s in sim.servers)


# Each operation: (rule, the client's part or "" when absent, the backend's part or "" when removed,
# whether a changed part stays in place rather than being appended).
OPERATIONS = {
    "default": ({"default": "Hi there"}, "", "PARAM=Hi%20there"),
    "override": ({"override": False}, "PARAM=true", "PARAM=false"),
    "block": ({"block": True}, "PARAM=x%2Fy", ""),
    "max": ({"max": 30}, "PARAM=600", "PARAM=30"),
    "append": ({"append": ["chat", "polls"]}, "PARAM=polls%2Cscreenshare", "PARAM=polls%2Cscreenshare%2Cchat"),
}
CREATE_HEAD = "meetingID=MID&name=Caf%C3%A9+%28x%29"
CREATE_TAIL = "attendeePW=a%2Ab&moderatorPW=mp&welcome=it's+*fine*"


def expected(head: str, given: str, result: str, tail: str) -> str:
    """The client's query with the rule's parameter changed in place, removed, or appended when absent."""
    if given:
        return "&".join(p for p in (head, result, tail) if p)
    return "&".join(p for p in (head, tail, result) if p)


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("transport", ["get", "post-body-signed", "post-form-beside-query"])
async def test_each_operation_on_create(lb_factory, sim, operation, transport):
    rule, given, result = OPERATIONS[operation]
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"create": {"custom_param": rule}}))
    calls = sent(lb)
    meeting_id = f"{operation}-{transport}"
    head = CREATE_HEAD.replace("MID", meeting_id)
    given, result = given.replace("PARAM", "custom_param"), result.replace("PARAM", "custom_param")
    if transport == "get":
        reply = await lb.http(lb.sign("create", "&".join(p for p in (head, given, CREATE_TAIL) if p),
                                      secret="moodle-secret", algorithm="sha1"))
        want_query, want_body = expected(head, given, result, CREATE_TAIL), None
    elif transport == "post-body-signed":
        body = checksum.sign("create", "&".join(p for p in (head, given, CREATE_TAIL) if p), "moodle-secret")
        reply = await lb.http(lb.api + "create", method="POST", data=body.encode(), headers=FORM)
        want_query, want_body = expected(head, given, result, CREATE_TAIL), None
    else:  # the query is signed; the form body beside it carries the rule's parameter and more
        form = "&".join(p for p in (given, CREATE_TAIL) if p)
        reply = await lb.http(lb.sign("create", head, secret="moodle-secret"), method="POST", data=form.encode(),
                              headers=FORM)
        changed = result != given
        want_query = "&".join(p for p in (head, result if changed else "") if p)
        want_body = (CREATE_TAIL if changed else form).encode()
    assert reply.field("returncode") == "SUCCESS", reply.text
    create = [c for c in calls if c["call"] == "create"][-1]
    assert client_part(create["query"]) == want_query  # byte for byte, untouched parameters as sent
    if want_body is not None:
        assert create["body"] == want_body
    assert last_create(sim, meeting_id)["checksum_ok"]  # the backend verified the re-signed call


JOIN_HEAD = "meetingID=jm&fullName=Ana+%C3%A9+%28x%29"
JOIN_TAIL = "password=ap&userdata-note=it's+*fine*"


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("redirect", [True, False])
async def test_each_operation_on_join(lb_factory, sim, operation, redirect):
    rule, given, result = OPERATIONS[operation]
    lb = await lb_factory(servers=[0], integrations=moodle(rules={"join": {"userdata-custom": rule}}))
    await lb.call("create", {"meetingID": "jm", "name": "Join room", "attendeePW": "ap", "moderatorPW": "mp"},
                  secret="moodle-secret")
    given, result = given.replace("PARAM", "userdata-custom"), result.replace("PARAM", "userdata-custom")
    tail = JOIN_TAIL if redirect else JOIN_TAIL + "&redirect=false"
    query = "&".join(p for p in (JOIN_HEAD, given, tail) if p)
    reply = await lb.http(lb.sign("join", query, secret="moodle-secret", algorithm="sha1"))
    if redirect:
        assert reply.status == 302, reply.text
        assert await follow(reply.headers["Location"]) == 302  # the browser's step to the backend
    else:
        assert reply.field("returncode") == "SUCCESS", reply.text
    backend_join = [r for r in sim.requests("bbb1") if r["call"] == "join"][-1]
    assert backend_join["checksum_ok"]
    assert backend_join["raw_query"].rsplit("&checksum=", 1)[0] == expected(JOIN_HEAD, given, result, tail)


async def test_the_lb_itself_reads_the_call_as_rewritten(lb_factory, sim):
    """can_record, redirect and role are read after the rules, as the backend will read them."""
    lb = await lb_factory(servers=[0], integrations=moodle(
        can_record=False, max_participants=1, limit_moderators=False,
        rules={"create": {"record": {"override": "false"}},
               "join": {"redirect": {"override": "false"}, "role": {"block": True}}}))
    created = await lb.call("create", {"meetingID": "rw", "name": "Rewritten", "record": "true",
                                       "attendeePW": "ap", "moderatorPW": "mp"}, secret="moodle-secret")
    assert created.field("returncode") == "SUCCESS", created.text  # record=false once rewritten: allowed
    joined = await lb.call("join", {"meetingID": "rw", "fullName": "A", "password": "ap"}, secret="moodle-secret")
    assert joined.status == 200 and joined.field("messageKey") == "successfullyJoined"  # proxied, not 302
    # role=MODERATOR is blocked, so this attendee is no moderator and the limit of 1 holds.
    second = await lb.call("join", {"meetingID": "rw", "fullName": "B", "password": "ap", "role": "MODERATOR"},
                           secret="moodle-secret")
    assert second.field("messageKey") == "permissionDenied"
