"""Raw query strings edited without re-encoding what the client signed.

Only parameters the load balancer itself changes are touched; every other byte stays as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote_plus


def _decode(text: str) -> str:
    return unquote_plus(text, errors="replace")


def encode_value(value: str) -> str:
    """Encode a value the LB adds itself (RFC 3986 unreserved left as is).

    A character standing for an undecodable raw byte (a surrogate escape) is sent as that byte;
    any other lone surrogate, which no decoder produces, as U+FFFD: encoding never raises.
    """
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = value.encode("utf-8", "replace")
    return quote(data, safe="-_.~")


@dataclass(frozen=True, slots=True)
class RawQuery:
    """A query string kept as its raw ``&``-separated parts."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> RawQuery:
        return cls(tuple(text.split("&")) if text else ())

    @property
    def text(self) -> str:
        return "&".join(self.parts)

    def pairs(self) -> list[tuple[str, str]]:
        """Decoded (key, value) pairs in order; blank values kept, empty parts skipped."""
        result = []
        for part in self.parts:
            if not part:
                continue
            key, _, value = part.partition("=")
            result.append((_decode(key), _decode(value)))
        return result

    def _key_of(self, part: str) -> str:
        return _decode(part.partition("=")[0])

    def without(self, *keys: str, lowercase: bool = False) -> RawQuery:
        """Drop every part whose decoded key is in ``keys`` (compared lower-cased when asked)."""
        drop = {k.lower() for k in keys} if lowercase else set(keys)

        def keep(part: str) -> bool:
            key = self._key_of(part)
            return (key.lower() if lowercase else key) not in drop

        return RawQuery(tuple(p for p in self.parts if not p or keep(p)))

    def replaced(self, key: str, value: str) -> RawQuery:
        """Set every occurrence of ``key`` to ``value``; append it when absent."""
        encoded = f"{encode_value(key)}={encode_value(value)}"
        parts = [encoded if p and self._key_of(p) == key else p for p in self.parts]
        if encoded not in parts:
            parts.append(encoded)
        return RawQuery(tuple(parts))

    def appended(self, key: str, value: str) -> RawQuery:
        return RawQuery((*self.parts, f"{encode_value(key)}={encode_value(value)}"))
