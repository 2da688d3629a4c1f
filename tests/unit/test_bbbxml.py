"""lb_core.bbbxml: the string builder's one check of element names, and its escaping."""

from __future__ import annotations

import pytest

from lb_core import bbbxml


@pytest.mark.parametrize("name", ["meetingID", "bbb-recording-ready-url", "_x", "a.b", "Meta_1"])
def test_valid_names_are_elements(name: str) -> None:
    assert bbbxml.is_tag_name(name)
    assert bbbxml.element(name, "v") == f"<{name}>v</{name}>"


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "-x", ".x", "a b", "a>b", "a/b", "x:y", "a\n", "xml", "XMLthing", "xml-stylesheet", "é", "<script"],
)
def test_invalid_names_are_refused_by_the_check_and_by_the_builder(name: str) -> None:
    assert not bbbxml.is_tag_name(name)
    with pytest.raises(ValueError, match="not an XML element name"):
        bbbxml.element(name, "v")
    if name:  # ("", Raw) embeds already serialised XML, by design
        with pytest.raises(ValueError):
            bbbxml.success([("fine", [(name, "v")])])  # nested too: every element goes through the check


def test_a_refused_name_stays_refused_and_the_cache_is_bounded() -> None:
    assert not bbbxml.is_tag_name("a b") and not bbbxml.is_tag_name("a b")
    for i in range(bbbxml._MAX_CHECKED_TAGS + 10):
        assert bbbxml.is_tag_name(f"meta_key_{i}")
    assert len(bbbxml._CHECKED_TAGS) <= bbbxml._MAX_CHECKED_TAGS
    assert bbbxml.element(f"meta_key_{bbbxml._MAX_CHECKED_TAGS + 5}", 1) == (
        f"<meta_key_{bbbxml._MAX_CHECKED_TAGS + 5}>1</meta_key_{bbbxml._MAX_CHECKED_TAGS + 5}>")
    with pytest.raises(ValueError):
        bbbxml.element("not valid", "v")


def test_values_are_escaped_and_nested_and_the_answer_parses() -> None:
    body = bbbxml.success([
        ("message", 'a < b & "c" > d\x00\x1f'),
        ("running", False),
        ("empty", ""),
        ("none", None),
        ("attendees", []),
        ("metadata", {"bbb-origin": "Moodle"}),
        ("", bbbxml.Raw("<raw>kept</raw>")),
    ])
    assert body == (
        b"<response><returncode>SUCCESS</returncode><message>a &lt; b &amp; \"c\" &gt; d</message>"
        b"<running>false</running><empty></empty><none/><attendees/>"
        b"<metadata><bbb-origin>Moodle</bbb-origin></metadata><raw>kept</raw></response>"
    )
    root = bbbxml.parse(body)
    assert bbbxml.returncode(root) == "SUCCESS" and root.findtext("metadata/bbb-origin") == "Moodle"
    assert bbbxml.parse(bbbxml.failed("checksumError", "x")).findtext("messageKey") == "checksumError"
