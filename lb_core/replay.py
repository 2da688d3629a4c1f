"""Replaying captured BBB API calls against another load balancer (or BBB server), and judging the answers.

A capture holds each client's request as signed with *its* secret. To send it to a target with a
different secret the checksum is recomputed over exactly the captured bytes (with the same algorithm,
told by the checksum's length), and only the checksum value changes. Optional meeting-ID prefixes let
a replay run next to the original session on shared BBB servers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from lb_core import bbbxml, checksum
from lb_core.api import API_PREFIX
from lb_core.query import RawQuery, encode_value

FORM = "application/x-www-form-urlencoded"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def call_name(path: str) -> str | None:
    """The API call a request path names (``.xml`` suffix allowed), or None outside the API."""
    path = path.partition("?")[0]
    if not path.startswith(API_PREFIX + "/"):
        return None
    name = path[len(API_PREFIX) + 1:]
    if name.endswith(".xml"):
        name = name[:-4]
    return name or None


def prefix_meeting_ids(raw: str, prefix: str) -> str:
    """Every ``meetingID`` value prefixed; the value's captured encoding and all other parts kept."""
    if not prefix or not raw:
        return raw
    encoded = encode_value(prefix)
    parts = []
    for part in RawQuery.parse(raw).parts:
        key, eq, value = part.partition("=")
        parts.append(f"{key}={encoded}{value}" if eq and unquote_plus(key) == "meetingID" else part)
    return "&".join(parts)


def resign(call: str, raw: str, secret: str, prefix: str = "") -> str:
    """``raw`` with meeting IDs prefixed and its checksum recomputed for ``secret``.

    The checksum keeps its place and its algorithm, so the target verifies the same bytes the
    original server did. A query without a checksum comes back unchanged.
    """
    supplied = checksum.checksum_param(raw)
    if supplied is None:
        return raw
    algorithm = checksum.algorithm_for(supplied) or checksum.DEFAULT_BACKEND_ALGORITHM
    edited = prefix_meeting_ids(raw, prefix)
    signed = checksum.strip_checksum(edited, supplied)
    fresh = checksum.compute(call, signed, secret, algorithm)
    old_part = "checksum=" + supplied
    parts = list(RawQuery.parse(edited).parts)
    parts[parts.index(old_part)] = "checksum=" + fresh
    return "&".join(parts)


def should_resign(raw_query: str, body_text: str, checksum_state: str, recorded: Outcome) -> bool:
    """Re-sign only calls whose captured checksum was good; bad ones replay as-is to reproduce the error."""
    if checksum_state in ("missing", "mismatch") or recorded.message_key == "checksumError":
        return False
    return checksum.checksum_param(raw_query) is not None or checksum.checksum_param(body_text) is not None


@dataclass(frozen=True, slots=True)
class Rewritten:
    query: str
    body: bytes
    resigned: bool


def rewrite(call: str, raw_query: str, body: bytes, content_type: str, secret: str, *, prefix: str = "",
            resign_it: bool = True) -> Rewritten:
    """The query and body to send: re-signed wherever the checksum travels (query, or a form body)."""
    if not resign_it:
        return Rewritten(raw_query, body, False)
    is_form = content_type.split(";")[0].strip().lower() == FORM
    body_text = body.decode("utf-8", "surrogateescape") if is_form and body else ""
    if checksum.checksum_param(raw_query) is not None:
        query = resign(call, raw_query, secret, prefix)
        if body_text and prefix:  # form fields travel unsigned next to a signed query
            body = prefix_meeting_ids(body_text, prefix).encode("utf-8", "surrogateescape")
        return Rewritten(query, body, True)
    if checksum.checksum_param(body_text) is not None:
        new_body = resign(call, body_text, secret, prefix).encode("utf-8", "surrogateescape")
        return Rewritten(prefix_meeting_ids(raw_query, prefix), new_body, True)
    return Rewritten(raw_query, body, False)


def target_url(target: str, path: str, raw_query: str) -> str:
    """``path`` on the target; the target may be given as the host, ``…/bigbluebutton/`` or ``…/api/``."""
    base = target.rstrip("/")
    for suffix in ("/api", "/bigbluebutton"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    url = base + path.partition("?")[0]
    return f"{url}?{raw_query}" if raw_query else url


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an answer says, without its volatile parts (IDs, timestamps, server names)."""

    status: int
    returncode: str = ""
    message_key: str = ""
    location: bool = False
    error: str = ""

    @property
    def redirect(self) -> bool:
        return self.status in REDIRECTS and self.location

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, "returncode": self.returncode,
                                "messageKey": self.message_key}
        if self.redirect:
            data["redirect"] = True
        if self.error:
            data["error"] = self.error
        return data


def outcome(status: int, body: bytes, location: str | None = None) -> Outcome:
    """Read returncode and messageKey from an XML (or JSON) API answer; anything else leaves them empty."""
    stripped = body.lstrip()
    if stripped.startswith(b"<"):
        try:
            root = bbbxml.parse(body)
        except bbbxml.XmlError:
            return Outcome(status, location=bool(location))
        return Outcome(status, bbbxml.returncode(root), bbbxml.text_of(root, "messageKey"), bool(location))
    if stripped.startswith(b"{"):
        try:
            data = json.loads(body)
            response = data.get("response", data) if isinstance(data, dict) else {}
            return Outcome(status, str(response.get("returncode", "")), str(response.get("messageKey", "")),
                           bool(location))
        except (ValueError, AttributeError):
            pass
    return Outcome(status, location=bool(location))


def compare(recorded: Outcome, replayed: Outcome) -> list[str]:
    """Differences that matter: HTTP status, returncode, messageKey; a redirect only has to redirect again."""
    if replayed.error:
        return [f"no answer: {replayed.error}"]
    if recorded.redirect:
        return [] if replayed.redirect else [f"expected a redirect, got HTTP {replayed.status}"
                                             + (f" {replayed.message_key}" if replayed.message_key else "")]
    differences = []
    if recorded.status != replayed.status:
        differences.append(f"HTTP status {recorded.status} -> {replayed.status}")
    if recorded.returncode != replayed.returncode:
        differences.append(f"returncode {recorded.returncode or '-'} -> {replayed.returncode or '-'}")
    if recorded.message_key != replayed.message_key:
        differences.append(f"messageKey {recorded.message_key or '-'} -> {replayed.message_key or '-'}")
    return differences


def offsets(timestamps: Sequence[float]) -> list[float]:
    """Seconds after the first request at which each request was made (the original pacing)."""
    if not timestamps:
        return []
    first = timestamps[0]
    return [max(0.0, t - first) for t in timestamps]


def summary(total: int, different: int) -> str:
    return f"replayed {total} calls: {total - different} identical, {different} different"
