"""The one place BBB-style XML is built and parsed.

Building is plain string assembly (it runs on every request); parsing outside XML is done with
entity resolution, DTD loading and network access switched off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from lxml import etree

CONTENT_TYPE = "text/xml;charset=utf-8"
XML_HEADERS = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-cache"}

# Characters XML 1.0 cannot carry at all; an echoed value must never make the answer invalid.
_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


_TAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Names already checked, so the builder's check is one set look-up per element. Bounded: names that
# come from outside (metadata keys) are checked each time once it is full.
_CHECKED_TAGS: set[str] = set()
_MAX_CHECKED_TAGS = 4096


def is_tag_name(name: str) -> bool:
    """Whether a name can become an element name: the one rule for every element built here.

    Callers holding names from outside (metadata keys, create queries) filter with it; ``element``
    refuses anything else, so no answer can carry a broken or injected tag.
    """
    if name in _CHECKED_TAGS:
        return True
    if not (_TAG_NAME.fullmatch(name) and not name.lower().startswith("xml")):
        return False
    if len(_CHECKED_TAGS) < _MAX_CHECKED_TAGS:
        _CHECKED_TAGS.add(name)
    return True


class Raw(str):
    """Already serialised XML, embedded as is."""


class XmlError(ValueError):
    """Outside XML that could not be parsed safely."""


def escape(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _INVALID_XML_CHARS.sub("", str(value)).translate(_ESCAPES)


def element(tag: str, value: Any) -> str:
    """Serialise ``value`` under ``tag``: scalars as text, mappings and (tag, value) lists nested.

    Raises ValueError for a tag that ``is_tag_name`` refuses: a bug, never something to send.
    """
    if tag not in _CHECKED_TAGS and not is_tag_name(tag):
        raise ValueError(f"not an XML element name: {tag[:64]!r}")
    if isinstance(value, Raw):
        return f"<{tag}>{value}</{tag}>"
    if isinstance(value, Mapping):
        value = list(value.items())
    if isinstance(value, list):
        if not value:
            return f"<{tag}/>"
        return f"<{tag}>{children(value)}</{tag}>"
    text = escape(value)
    return f"<{tag}>{text}</{tag}>" if text else f"<{tag}/>" if value is None else f"<{tag}></{tag}>"


def children(items: Iterable[tuple[str, Any]]) -> str:
    return "".join(Raw(v) if tag == "" else element(tag, v) for tag, v in items)


def response(returncode: str, fields: Iterable[tuple[str, Any]] | Mapping[str, Any] = ()) -> bytes:
    """A whole BBB answer; ``returncode`` is ours (SUCCESS, FAILED), never an outside value."""
    if isinstance(fields, Mapping):
        fields = fields.items()
    return f"<response><returncode>{escape(returncode)}</returncode>{children(fields)}</response>".encode()


def success(fields: Iterable[tuple[str, Any]] | Mapping[str, Any] = ()) -> bytes:
    return response("SUCCESS", fields)


def failed(message_key: str, message: str) -> bytes:
    return response("FAILED", (("messageKey", message_key), ("message", message)))


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=False
)


def parse(data: bytes) -> etree._Element:
    """Parse outside XML (backend answers, config.xml, slides) with every external access off."""
    if not data or not data.strip():
        raise XmlError("empty document")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XmlError(str(exc)) from None
    if root is None:
        raise XmlError("no root element")
    return root


def serialize(node: etree._Element) -> str:
    return etree.tostring(node, encoding="unicode")


def text_of(root: etree._Element, path: str, default: str = "") -> str:
    found = root.findtext(path)
    return default if found is None else found.strip()


def returncode(root: etree._Element) -> str:
    return text_of(root, "returncode")
