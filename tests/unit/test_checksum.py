import hashlib

import pytest

from lb_core import checksum
from lb_core.query import RawQuery

DOCS_QUERY = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444"
DOCS_SECRET = "639259d4-9dd8-4b25-bf01-95f9567eaf4b"

VECTORS = [
    ("create", DOCS_QUERY, DOCS_SECRET, "sha1", "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"),
    ("create", DOCS_QUERY, DOCS_SECRET, "sha256", "da9185f7f333cfdfcd6eeac32dca3777510c4c436020d8b887ba5515bd1d189e"),
    ("create", DOCS_QUERY, DOCS_SECRET, "sha384",
     "891ac633df39d0a1b4f8d597f3e190833216c4b29c4fb51ea3ca72757eeb958d6e7b49a845cf29f5c6019c7d29d029d1"),
    ("create", DOCS_QUERY, DOCS_SECRET, "sha512",
     "de73ad61d11a5c801b68d4bd6ec5248546085cefb0b25c85f3c46249ea93a3a4b120f92c0a8a58d7512cb77821884951a3b01245f3435dbbef49fff3cc3988b4"),
    ("isMeetingRunning", "meetingID=Foo", "MyTestSalt", "sha1", "f59b73c5cf1db387da4ca7d937049420d4c50a12"),
    ("getMeetings", "", "testsecret", "sha1", "320c5fe9ed02c4337c946eb2f9e7587e16b22bcc"),
    ("getMeetings", "", "testsecret", "sha256", "aa062dc5ee2f516008aeb76473a9fcafaeeaded5099c45272f59522c679da3a9"),
    ("getMeetings", "", "testsecret", "sha512",
     "a369a58120a913ff250a4e3f6647d243a290acbd70336b853b83b0277cea0c804830f3a182749577879196ad0fe01d810221f9ed6922d1a1e583faf81ce2206c"),
    ("join", "fullName=Alice+%C3%84&meetingID=rb-1&password=mp&redirect=false", "testsecret", "sha1",
     "43fafbf7dd74e08715b5de1bb0ce95109c5eb040"),
    ("create", "attendeePW=ap&meetingID=rb-1&moderatorPW=mp&name=Room+%281%29+%26+co%21", "testsecret", "sha256",
     "a7c69877b94c1145c7cb063de5177ec141c54e0d35ba003c874451c9468e6a6a"),
]


@pytest.mark.parametrize(("call", "query", "secret", "algorithm", "expected"), VECTORS)
def test_known_vectors(call, query, secret, algorithm, expected):
    assert checksum.compute(call, query, secret, algorithm) == expected
    assert checksum.matching_owner(call, query, expected, [(secret, "ok")]) == "ok"
    assert checksum.matching_owner(call, query, expected.upper(), [(secret, "ok")]) == "ok"
    assert checksum.matching_owner(call, query, expected, [("other", "no")]) is None


@pytest.mark.parametrize("query", [
    "name=A+B", "name=A%20B", "name=%28x%29", "name=x!", "", "&meetingID=x", "b=2&a=1", "name=it's*(ok)",
])
def test_raw_query_is_hashed_as_sent(query):
    signed = checksum.sign("create", query, "s3cret", "sha1")
    value = checksum.checksum_param(signed)
    stripped = checksum.strip_checksum(signed, value)
    assert stripped == query
    expected = hashlib.sha1(("create" + query + "s3cret").encode()).hexdigest()
    assert value == expected


@pytest.mark.parametrize(("raw", "stripped"), [
    ("checksum=abc&meetingID=x", "meetingID=x"),
    ("meetingID=x&checksum=abc&name=y", "meetingID=x&name=y"),
    ("meetingID=x&checksum=abc", "meetingID=x"),
    ("checksum=abc", ""),
    ("&checksum=abc", ""),
    ("meetingID=x\x01&checksum=abc", "meetingID=x"),
])
def test_strip_checksum_by_text_replacement(raw, stripped):
    assert checksum.strip_checksum(raw, checksum.checksum_param(raw) or "abc") == stripped


def test_unknown_lengths_and_disallowed_algorithms_fail():
    query = "meetingID=Foo"
    sha1 = checksum.compute("isMeetingRunning", query, "MyTestSalt", "sha1")
    assert checksum.matching_owner("isMeetingRunning", query, sha1[:-1], [("MyTestSalt", 1)]) is None
    assert checksum.matching_owner("isMeetingRunning", query, "zz" * 20, [("MyTestSalt", 1)]) is None
    assert checksum.matching_owner("isMeetingRunning", query, sha1, [("MyTestSalt", 1)], allowed=("sha256",)) is None


def test_rotation_picks_the_owner_of_the_matching_secret():
    digest = checksum.compute("getMeetings", "", "new", "sha256")
    owners = [("old", "a"), ("new", "b"), ("other", "c")]
    assert checksum.matching_owner("getMeetings", "", digest, owners) == "b"


def test_legacy_form_query_is_sorted_and_java_encoded():
    params = [("name", "A B*~"), ("meetingID", "m"), ("checksum", "x")]
    assert checksum.legacy_params_query(params) == "meetingID=m&name=A+B*%7E"


def test_raw_query_edits_keep_other_bytes():
    q = RawQuery.parse("name=A+B&preferredServer=bbb2&meetingID=%28x%29&&meta_Mconflb-guid=1")
    assert q.without("preferredServer").text == "name=A+B&meetingID=%28x%29&&meta_Mconflb-guid=1"
    assert q.without("meta_mconflb-guid", lowercase=True).text == "name=A+B&preferredServer=bbb2&meetingID=%28x%29&"
    assert q.replaced("voiceBridge", "71234").text.endswith("&voiceBridge=71234")
    assert ("meetingID", "(x)") in q.pairs()
