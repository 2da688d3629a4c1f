"""Property-based tests: hostile input never raises anything but the documented errors.

Covers the checksum verifier, the raw-query editor, the config.xml rewriter and the XML builder,
the four places every anonymous request's bytes pass through.
"""

from __future__ import annotations

import hashlib

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lb_core import bbbxml, checksum
from lb_core.configxml import rewrite_urls
from lb_core.query import RawQuery, encode_value

# Text as it can reach the LB: any character (lone surrogates stand for undecodable raw bytes),
# and query-looking text made of the characters that matter to the parsers.
ANY_TEXT = st.text(st.characters(codec=None), max_size=200)
QUERY_TEXT = st.lists(st.sampled_from(list("ab=&%+;?#.-_~ 0fFxX\x00\x7f\u00e9\udcff") + ["checksum=", "%2"]),
                      max_size=60).map("".join)
TEXTS = st.one_of(ANY_TEXT, QUERY_TEXT)
ALGORITHM = st.sampled_from(sorted(checksum.ALGORITHMS))

settings.register_profile("bbb-lb", max_examples=300, deadline=None)
settings.load_profile("bbb-lb")


# --- checksum --------------------------------------------------------------------------------------


@given(st.one_of(TEXTS, st.binary(max_size=200)), TEXTS)
def test_checksum_parsing_never_raises(raw: str | bytes, supplied: str) -> None:
    found = checksum.checksum_param(raw)
    assert found is None or isinstance(found, str)
    stripped = checksum.strip_checksum(raw, supplied)
    assert type(stripped) is type(raw)
    assert len(stripped) <= len(raw)


@given(TEXTS, TEXTS, TEXTS, ALGORITHM)
def test_compute_never_raises_and_bytes_hash_as_sent(call: str, query: str, secret: str, algorithm: str) -> None:
    digest = checksum.compute(call, query, secret, algorithm)
    assert len(digest) == checksum.ALGORITHMS[algorithm]().digest_size * 2
    raw = query.encode("utf-8", "surrogateescape") if not _lone_surrogate(query) else None
    if raw is not None:
        assert checksum.compute(call, raw, secret, algorithm) == digest


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return True
    return False


@given(TEXTS, TEXTS)
def test_an_unknown_algorithm_is_the_only_error(query: str, algorithm: str) -> None:
    assume(algorithm not in checksum.ALGORITHMS)
    try:
        checksum.compute("create", query, "s", algorithm)
    except ValueError as error:
        assert "unknown checksum algorithm" in str(error)
    else:
        raise AssertionError("an unknown algorithm was accepted")


@given(TEXTS, TEXTS, st.text(max_size=130))
def test_matching_owner_never_raises_on_any_checksum(call: str, query: str, supplied: str) -> None:
    assert checksum.matching_owner(call, query, supplied, [("secret", "owner")]) in (None, "owner")


@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=100),
       st.text(min_size=1, max_size=40), ALGORITHM)
def test_a_signed_query_verifies_and_a_changed_one_does_not(query: str, secret: str, algorithm: str) -> None:
    assume("checksum=" not in query)
    signed = checksum.sign("create", query, secret, algorithm)
    supplied = checksum.checksum_param(signed)
    assert supplied is not None
    stripped = checksum.strip_checksum(signed, supplied)
    assert stripped == query
    owners = [("wrong", "other"), (secret, "me")]
    assert checksum.matching_owner("create", stripped, supplied, owners) == ("me" if secret != "wrong" else "other")
    assert checksum.matching_owner("create", stripped + "x", supplied, owners) is None
    tampered = supplied[:-1] + ("0" if supplied[-1] != "0" else "1")
    assert checksum.matching_owner("create", stripped, tampered, [(secret, "me")]) is None


@given(st.binary(max_size=300))
def test_checksum_search_in_bytes_matches_the_split_definition(raw: bytes) -> None:
    """One scan finds what splitting on '&' would: the first part that starts with ``checksum=``."""
    expected = next((p[len(b"checksum="):].decode("latin-1") for p in raw.split(b"&")
                     if p.startswith(b"checksum=")), None)
    assert checksum.checksum_param(raw) == expected


# --- raw query editor -------------------------------------------------------------------------------


@given(TEXTS)
def test_a_query_round_trips_byte_exact(text: str) -> None:
    query = RawQuery.parse(text)
    assert query.text == text
    for key, value in query.pairs():
        assert isinstance(key, str) and isinstance(value, str)


@given(TEXTS, TEXTS, TEXTS)
def test_query_edits_never_raise_and_touch_only_their_key(text: str, key: str, value: str) -> None:
    query = RawQuery.parse(text)
    without = query.without(key)
    assert all(k != key for k, _ in without.pairs())
    assert all(p in query.parts for p in without.parts)
    assert query.without(key, lowercase=True).parts == tuple(
        p for p in query.parts if not p or query._key_of(p).lower() != key.lower())
    assume(key)
    replaced = query.replaced(key, value)
    assert [v for k, v in replaced.pairs() if k == key] and all(
        v == value for k, v in replaced.pairs() if k == key) or _has_surrogate(key + value)
    untouched = [p for p in query.parts if not p or query._key_of(p) != key]
    assert [p for p in replaced.parts if p in untouched] == untouched
    appended = query.appended(key, value)
    assert appended.parts[:-1] == query.parts
    assert appended.pairs()[-1] == (key, value) or _has_surrogate(key + value)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


@given(TEXTS)
def test_encoded_values_decode_back(value: str) -> None:
    encoded = encode_value(value)  # never raises, surrogates included
    assume(not _has_surrogate(value))
    encoded = encode_value(value)
    assert encoded.isascii() and "&" not in encoded and "=" not in encoded
    assert RawQuery.parse(f"k={encoded}").pairs() == [("k", value)]


# --- config.xml rewriter ----------------------------------------------------------------------------

SERVER = "http://10.0.0.5:8090/bigbluebutton/"
LB = "https://lb.example.org/bigbluebutton/"
CONFIG_TEXT = st.one_of(ANY_TEXT, st.lists(st.sampled_from([
    "http://10.0.0.5:8090", "rtmp://10.0.0.5", "10.0.0.5:8090", '="10.0.0.5"', "a", ".", "/", ":", " ", "<",
    "x.http", "HTTP", "://", "\u0130", "_",
]), max_size=30).map("".join))


@given(CONFIG_TEXT, st.sampled_from([(SERVER, LB), (LB, SERVER), ("http://h/", "https://lb:8443/"), ("", LB)]))
def test_rewriting_never_raises_and_is_idempotent(text: str, bases: tuple[str, str]) -> None:
    once = rewrite_urls(text, *bases)
    assert rewrite_urls(once, *bases) == once



# --- XML builder ------------------------------------------------------------------------------------


# Element names as the builder takes them: names starting with "xml" (any case) are reserved by XML and refused.
ELEMENT_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda name: not name.lower().startswith("xml"))


@given(TEXTS, TEXTS, st.lists(st.tuples(ELEMENT_NAMES, TEXTS), max_size=5))
def test_built_xml_always_parses_and_keeps_the_text(key: str, message: str,
                                                   fields: list[tuple[str, str]]) -> None:
    root = bbbxml.parse(bbbxml.failed(key, message))
    assert root.findtext("returncode") == "FAILED"
    assert root.findtext("messageKey") == _xml_safe(key)
    assert root.findtext("message") == _xml_safe(message)
    built = bbbxml.parse(bbbxml.success([("fields", fields)]))
    assert [(c.tag, c.text or "") for c in built.find("fields")] == [(k, _xml_safe(v)) for k, v in fields]


def _xml_safe(text: str) -> str:
    """What XML 1.0 can carry of ``text`` (the builder drops the rest) with line ends as a parser reads them."""
    kept = "".join(c for c in text if bbbxml.escape(c) == c or c in "&<>")
    return kept.replace("\r\n", "\n").replace("\r", "\n")


@given(st.binary(max_size=300))
def test_parsing_any_bytes_raises_only_xml_error(data: bytes) -> None:
    try:
        bbbxml.parse(data)
    except bbbxml.XmlError:
        pass


@given(TEXTS)
def test_tag_name_check_never_raises(name: str) -> None:
    assert bbbxml.is_tag_name(name) in (True, False)


def test_the_hash_helpers_agree_with_hashlib() -> None:
    assert checksum.compute("c", b"q", "s", "sha1") == hashlib.sha1(b"cqs").hexdigest()
