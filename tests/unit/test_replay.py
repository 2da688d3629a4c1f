"""Re-signing, prefixing and answer comparison for ``bbb-lb replay``; password masking for captures."""

from __future__ import annotations

import pytest

from lb_core import checksum, replay
from lb_core.capture import mask_query, mask_url, mask_xml
from lb_core.replay import Outcome


def verifies(call: str, raw: str, secret: str) -> bool:
    supplied = checksum.checksum_param(raw)
    assert supplied is not None
    signed = checksum.strip_checksum(raw, supplied)
    return checksum.matching_owner(call, signed, supplied, [(secret, True)]) is True


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_resign_changes_only_the_checksum_and_keeps_the_algorithm(algorithm):
    query = "name=Room+%281%29+%26+co%21&meetingID=enc-1&welcome=&moderatorPW=mp"
    raw = checksum.sign("create", query, "old-secret", algorithm)
    resigned = replay.resign("create", raw, "new-secret")
    assert resigned.startswith(query + "&checksum=")
    old, new = checksum.checksum_param(raw), checksum.checksum_param(resigned)
    assert old and new and len(old) == len(new) and old != new
    assert checksum.algorithm_for(new) == algorithm
    assert verifies("create", resigned, "new-secret") and not verifies("create", resigned, "old-secret")


def test_resign_keeps_the_checksum_where_the_client_put_it():
    digest = checksum.compute("isMeetingRunning", "&meetingID=a%20b", "s1", "sha1")
    raw = f"checksum={digest}&meetingID=a%20b"  # first, and bbb-web strips "checksum=X&"
    resigned = replay.resign("isMeetingRunning", raw, "s2")
    assert resigned.startswith("checksum=") and resigned.endswith("&meetingID=a%20b")
    assert verifies("isMeetingRunning", resigned, "s2")


def test_a_query_without_checksum_is_left_alone():
    assert replay.resign("create", "meetingID=x&name=y", "s") == "meetingID=x&name=y"


def test_prefix_touches_only_meeting_ids_and_keeps_their_encoding():
    raw = "name=A+b&meetingID=room+1&recordID=r1&meetingID=room%202&meetingIDx=z"
    assert replay.prefix_meeting_ids(raw, "b-") == \
        "name=A+b&meetingID=b-room+1&recordID=r1&meetingID=b-room%202&meetingIDx=z"
    assert replay.prefix_meeting_ids(raw, "") == raw
    assert replay.prefix_meeting_ids("meetingID=x", "a b/") == "meetingID=a%20b%2Fx"


def test_resign_with_prefix_verifies_for_the_new_secret():
    raw = checksum.sign("join", "fullName=Ann+%C3%84&meetingID=m1&password=ap", "old", "sha256")
    resigned = replay.resign("join", raw, "new", prefix="replay-")
    assert resigned.startswith("fullName=Ann+%C3%84&meetingID=replay-m1&password=ap&checksum=")
    assert verifies("join", resigned, "new")


def test_rewrite_resigns_a_form_body_when_the_checksum_travels_there():
    body = checksum.sign("create", "meetingID=f1&name=Form", "old", "sha1").encode()
    out = replay.rewrite("create", "", body, "application/x-www-form-urlencoded; charset=utf-8", "new",
                         prefix="p-")
    assert out.resigned and out.query == ""
    assert out.body.startswith(b"meetingID=p-f1&name=Form&checksum=")
    assert verifies("create", out.body.decode(), "new")


def test_rewrite_as_is_when_told_not_to_resign():
    raw = "meetingID=x&checksum=" + "0" * 40
    out = replay.rewrite("create", raw, b"", "", "new", prefix="p-", resign_it=False)
    assert (out.query, out.resigned) == (raw, False)


def test_bad_and_missing_checksums_replay_as_captured():
    good = Outcome(200, "SUCCESS")
    error = Outcome(200, "FAILED", "checksumError")
    signed = "meetingID=x&checksum=" + "a" * 40
    assert replay.should_resign(signed, "", "ok", good)
    assert not replay.should_resign(signed, "", "mismatch", error)
    assert not replay.should_resign(signed, "", "", error)  # a capture without bbb metadata
    assert not replay.should_resign("meetingID=x", "", "missing", error)
    assert replay.should_resign("", "meetingID=x&checksum=" + "a" * 40, "ok", good)


def test_outcome_reads_xml_json_and_redirects():
    xml = b"<response><returncode>FAILED</returncode><messageKey>notFound</messageKey></response>"
    assert replay.outcome(200, xml) == Outcome(200, "FAILED", "notFound")
    assert replay.outcome(200, b'{"response": {"returncode": "SUCCESS"}}').returncode == "SUCCESS"
    assert replay.outcome(302, b"", "http://bbb1/join?x").redirect
    assert not replay.outcome(302, b"").redirect
    assert replay.outcome(502, b"<html>oops").returncode == ""


def test_compare_only_status_returncode_and_message_key():
    base = Outcome(200, "SUCCESS", "")
    assert replay.compare(base, Outcome(200, "SUCCESS", "")) == []
    assert replay.compare(base, Outcome(200, "FAILED", "checksumError")) == [
        "returncode SUCCESS -> FAILED", "messageKey - -> checksumError"]
    assert replay.compare(base, Outcome(500, "SUCCESS")) == ["HTTP status 200 -> 500"]
    assert replay.compare(base, Outcome(0, error="refused")) == ["no answer: refused"]


def test_compare_joins_only_by_their_redirect():
    recorded = Outcome(302, location=True)
    assert replay.compare(recorded, Outcome(302, location=True)) == []
    assert replay.compare(recorded, Outcome(200, "FAILED", "checksumError")) == [
        "expected a redirect, got HTTP 200 checksumError"]


def test_call_names_target_urls_and_pacing():
    assert replay.call_name("/bigbluebutton/api/create") == "create"
    assert replay.call_name("/bigbluebutton/api/getMeetings.xml") == "getMeetings"
    assert replay.call_name("/bigbluebutton/api/") is None
    assert replay.call_name("/bigbluebutton/api") is None
    assert replay.call_name("/other") is None
    for target in ("http://h:1", "http://h:1/", "http://h:1/bigbluebutton/", "http://h:1/bigbluebutton/api"):
        assert replay.target_url(target, "/bigbluebutton/api/end", "a=b") == "http://h:1/bigbluebutton/api/end?a=b"
    assert replay.offsets([10.0, 10.5, 12.0]) == [0.0, 0.5, 2.0]
    assert replay.summary(7, 2) == "replayed 7 calls: 5 identical, 2 different"


def test_masking_keeps_every_other_byte():
    raw = "meetingID=m&password=s%20ecret&fullName=A+B&attendeePW=ap&moderatorPW=&passwordx=1"
    assert mask_query(raw) == "meetingID=m&password=***&fullName=A+B&attendeePW=***&moderatorPW=***&passwordx=1"
    assert mask_query("a=b") == "a=b"
    url = "http://bbb1/bigbluebutton/api/join?password=mp&meetingID=m&checksum=abc"
    assert mask_url(url) == "http://bbb1/bigbluebutton/api/join?password=***&meetingID=m&checksum=abc"
    xml = b"<response><attendeePW>ap</attendeePW><moderatorPW><![CDATA[m<p]]></moderatorPW><x>1</x></response>"
    assert mask_xml(xml) == b"<response><attendeePW>***</attendeePW><moderatorPW>***</moderatorPW><x>1</x></response>"
