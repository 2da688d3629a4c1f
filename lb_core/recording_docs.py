"""A recording as BBB's XML has it: getRecordings' filters (``Query``), a ``<recording>`` of a server's answer
read into an index document (``recording_from_xml``), and an index document written back as bbb-web answers it
(``recording_fields``). ``recording_index`` keeps the documents; this module only maps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from lb_core import bbbxml, errors

STATES = ("processing", "processed", "published", "unpublished", "deleted")
DEFAULT_STATES = frozenset({"published", "unpublished"})  # bbb-web's, when no state is asked for
RECORD_ID_ITEMS_MAX = 100  # recordID items (prefixes) in one getRecordings, as bbblb allows


def check_record_id_items(record_ids: list[str]) -> None:
    """More prefixes than ``RECORD_ID_ITEMS_MAX`` is refused: each one costs a lookup (and, unknown, a fan-out)."""
    if len(record_ids) > RECORD_ID_ITEMS_MAX:
        raise errors.invalid_parameter(f"recordID takes at most {RECORD_ID_ITEMS_MAX} items")


def _int(text: str | None) -> int:
    text = (text or "").strip()
    return int(text) if text.isdigit() and len(text) < 19 else 0


@dataclass(slots=True)
class Query:
    """getRecordings' filters, as bbb-web reads them."""

    meeting_ids: list[str] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    states: frozenset[str] = DEFAULT_STATES
    meta: dict[str, str] = field(default_factory=dict)
    offset: int = 0
    limit: int | None = None

    @classmethod
    def parse_states(cls, raw: str) -> frozenset[str]:
        """``state=a,b``: ``any`` means every state but deleted, which is listed only when asked for by name."""
        asked = {s.strip().lower() for s in raw.split(",") if s.strip()}
        if not asked:
            return DEFAULT_STATES
        states = {s for s in asked if s in STATES}
        if "any" in asked:
            states |= set(STATES) - {"deleted"}
        return frozenset(states)


def recording_from_xml(node: etree._Element) -> dict[str, Any] | None:
    """A ``<recording>`` of a getRecordings answer as an index document (None without a recordID)."""
    text = bbbxml.text_of
    record_id = text(node, "recordID")
    if not record_id:
        return None
    metadata = {child.tag.lower(): (child.text or "") for child in node.iterfind("metadata/*")
                if isinstance(child.tag, str)}
    playback = []
    for fmt in node.iterfind("playback/format"):
        images = [{"url": (img.text or "").strip(), "width": img.get("width", ""), "height": img.get("height", ""),
                   "alt": img.get("alt", "")} for img in fmt.iterfind("preview/images/image")]
        playback.append({"type": text(fmt, "type"), "url": text(fmt, "url"),
                         "processing_time": _int(text(fmt, "processingTime")), "length": _int(text(fmt, "length")),
                         "size": _int(text(fmt, "size")), "preview": images})
    state = text(node, "state").lower() or ("published" if text(node, "published") == "true" else "unpublished")
    return {
        "record_id": record_id, "meeting_id": text(node, "meetingID"),
        "internal_meeting_id": text(node, "internalMeetingID") or record_id, "name": text(node, "name"),
        "is_breakout": text(node, "isBreakout") == "true", "state": state if state in STATES else "processed",
        "published": text(node, "published") == "true", "start_time": _int(text(node, "startTime")),
        "end_time": _int(text(node, "endTime")), "participants": _int(text(node, "participants")),
        "raw_size": _int(text(node, "rawSize")), "size": _int(text(node, "size")),
        "metadata": metadata, "playback": playback,
        "integration": metadata.get("mconflb-institution") or "default",
    }


def recording_fields(doc: dict[str, Any], playback_base: str) -> list[tuple[str, Any]]:
    """The ``<recording>`` children bbb-web answers, from an index document.

    A format whose files the LB stores is played back from ``playback_base``; others keep the origin's URL.
    """
    metadata = [(k, v) for k, v in doc.get("metadata", {}).items() if bbbxml.is_tag_name(k)]
    stored = set(doc.get("stored_formats") or ())
    formats = []
    for fmt in doc.get("playback", []):
        url = fmt.get("url", "")
        if fmt.get("type") in stored:
            url = f"{playback_base}/{fmt['type']}/{doc['record_id']}/"
        items: list[tuple[str, Any]] = [("type", fmt.get("type", "")), ("url", url),
                                        ("processingTime", fmt.get("processing_time", 0)),
                                        ("length", fmt.get("length", 0))]
        if fmt.get("size"):
            items.append(("size", fmt["size"]))
        if fmt.get("preview"):
            items.append(("preview", [("images", [("", bbbxml.Raw(_image(i))) for i in fmt["preview"]])]))
        formats.append(("format", items))
    fields: list[tuple[str, Any]] = [
        ("recordID", doc["record_id"]), ("meetingID", doc.get("meeting_id", "")),
        ("internalMeetingID", doc.get("internal_meeting_id", "")), ("name", doc.get("name", "")),
        ("isBreakout", bool(doc.get("is_breakout"))), ("published", doc.get("state") == "published"),
        ("state", doc.get("state", "")), ("startTime", doc.get("start_time", 0)),
        ("endTime", doc.get("end_time", 0)), ("participants", doc.get("participants", 0)),
    ]
    if doc.get("raw_size"):
        fields.append(("rawSize", doc["raw_size"]))
    if doc.get("size"):
        fields.append(("size", doc["size"]))
    fields += [("metadata", metadata), ("playback", formats)]
    return fields


def _image(image: dict[str, str]) -> str:
    attrs = "".join(f' {k}="{bbbxml.escape(image.get(k, ""))}"' for k in ("width", "height", "alt") if image.get(k))
    return f"<image{attrs}>{bbbxml.escape(image.get('url', ''))}</image>"
