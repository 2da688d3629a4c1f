"""BBB API checksums, computed exactly as bbb-web 2.7/3.0 does.

The checksum covers ``callName + rawQueryWithoutChecksum + secret``. The query is the raw,
still percent-encoded URL query as the client sent it: never decode and re-encode it, because
clients differ on ``+``/``%20``, ``!'()*``, parameter order and a leading ``&``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from typing import TypeVar
from urllib.parse import quote_plus

ALGORITHMS = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
ALGORITHM_BY_HEX_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
DEFAULT_BACKEND_ALGORITHM = "sha256"

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
_HEX = re.compile(r"^[0-9a-fA-F]+$")

T = TypeVar("T")


Text = TypeVar("Text", str, bytes)


def sanitize(text: Text) -> Text:
    """Strip control characters, as bbb-web's ParamsUtil.sanitizeString does before hashing."""
    if isinstance(text, bytes):
        return _CONTROL_BYTES.sub(b"", text)
    return _CONTROL_CHARS.sub("", text)


def checksum_param(raw_query: str | bytes) -> str | None:
    """The raw value of the first ``checksum`` parameter, or None when there is none.

    Found with plain searches (no split of the whole text), so a large form body costs one scan; a
    value that is not ASCII comes back with its bytes as latin-1 characters (it can never verify).
    """
    raw = raw_query if isinstance(raw_query, bytes) else _utf8(raw_query)
    if raw.startswith(b"checksum="):
        start = len(b"checksum=")
    else:
        found = raw.find(b"&checksum=")
        if found < 0:
            return None
        start = found + len(b"&checksum=")
    end = raw.find(b"&", start)
    return raw[start:end if end >= 0 else len(raw)].decode("latin-1")


def strip_checksum(raw_query: Text, checksum: str) -> Text:
    """Remove the checksum by plain text replacement, in bbb-web's order (text or raw bytes alike)."""
    query = sanitize(raw_query)
    if isinstance(query, bytes):
        mark = sanitize(checksum.encode("latin-1", "replace"))
        query = query.replace(b"&checksum=" + mark, b"")
        query = query.replace(b"checksum=" + mark + b"&", b"")
        return query.replace(b"checksum=" + mark, b"")
    checksum = sanitize(checksum)
    query = query.replace("&checksum=" + checksum, "")
    query = query.replace("checksum=" + checksum + "&", "")
    return query.replace("checksum=" + checksum, "")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes; characters that stand for undecodable raw bytes (surrogate escapes) give those bytes back."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no decoder made: hashed as is, it can only mismatch
        return text.encode("utf-8", "surrogatepass")


def compute(call: str, query: str | bytes, secret: str, algorithm: str = DEFAULT_BACKEND_ALGORITHM) -> str:
    """Lowercase hex digest of ``call + query + secret``; a bytes query is hashed as sent, never decoded."""
    try:
        hash_function = ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}") from None
    digest = hash_function(_utf8(call))
    digest.update(query if isinstance(query, bytes) else _utf8(query))
    digest.update(_utf8(secret))
    return digest.hexdigest()


def algorithm_for(checksum: str) -> str | None:
    """The algorithm a client used, guessed from the hex length as bbb-web does."""
    if not _HEX.match(checksum):
        return None
    return ALGORITHM_BY_HEX_LENGTH.get(len(checksum))


def matching_owner(
    call: str,
    query: str | bytes,
    checksum: str,
    candidates: Iterable[tuple[str, T]],
    allowed: Sequence[str] = tuple(ALGORITHMS),
) -> T | None:
    """The owner of the first secret that verifies ``checksum`` (constant-time compare), or None.

    ``candidates`` pairs each secret with whatever it identifies (an integration), so one pass
    serves key rotation and several integrations alike.
    """
    algorithm = algorithm_for(checksum)
    if algorithm is None or algorithm not in allowed:
        return None
    supplied = checksum.lower().encode("ascii")
    found: T | None = None
    for secret, owner in candidates:
        expected = compute(call, query, secret, algorithm).encode("ascii")
        # Keep comparing after a match so the time taken does not tell which secret matched.
        if hmac.compare_digest(expected, supplied) and found is None:
            found = owner
    return found


def sign(call: str, query: str, secret: str, algorithm: str = DEFAULT_BACKEND_ALGORITHM) -> str:
    """``query`` with a checksum appended; the bytes of ``query`` are left exactly as given."""
    digest = compute(call, query, secret, algorithm)
    return f"{query}&checksum={digest}" if query else f"checksum={digest}"


def java_form_encode(value: str) -> str:
    """java.net.URLEncoder.encode(value, "UTF-8"): space as '+', '*' kept, '~' escaped."""
    return quote_plus(value, safe="*").replace("~", "%7E")


def legacy_params_query(params: Iterable[tuple[str, str]]) -> str:
    """The query older bbb-web (2.4-2.6) rebuilt from form parameters: keys sorted, checksum skipped."""
    latest: dict[str, str] = {}
    for key, value in params:
        if key != "checksum":
            latest.setdefault(key, value)
    return "&".join(f"{key}={java_form_encode(latest[key])}" for key in sorted(latest))
