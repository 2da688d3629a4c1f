"""Masking meeting passwords in a saved copy of the traffic.

Captures are handed to testers; the meeting passwords in them (``password``, ``attendeePW``,
``moderatorPW``) let anyone join those meetings. Masking edits raw text only, so every other
byte of a query or a document stays as captured.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

MASK = "***"
PASSWORD_PARAMS = frozenset({"password", "attendeePW", "moderatorPW"})

_XML_PASSWORDS = re.compile(
    rb"<(password|attendeePW|moderatorPW)>(?:<!\[CDATA\[.*?\]\]>|[^<]*)</\1>", re.DOTALL
)


def mask_query(raw: str, keys: frozenset[str] = PASSWORD_PARAMS) -> str:
    """The raw query with the values of ``keys`` replaced by ``***``; other parts untouched."""
    if not raw or "=" not in raw:
        return raw
    parts = raw.split("&")
    changed = False
    for i, part in enumerate(parts):
        key, eq, _ = part.partition("=")
        if eq and unquote_plus(key) in keys:
            parts[i] = f"{key}={MASK}"
            changed = True
    return "&".join(parts) if changed else raw


def mask_url(url: str) -> str:
    """``mask_query`` applied to the query of a URL (a join Location, a backend URL)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = query.partition("#")
    return f"{base}?{mask_query(query)}{hash_sep}{fragment}"


def mask_xml(body: bytes) -> bytes:
    """Password elements of a BBB answer (create, getMeetingInfo, getMeetings) emptied to ``***``."""
    if b"PW>" not in body and b"password>" not in body:
        return body
    return _XML_PASSWORDS.sub(rb"<\1>***</\1>", body)
