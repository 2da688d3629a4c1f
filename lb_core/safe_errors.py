"""HTTP client errors turned into messages that are safe to log and show.

aiohttp exceptions carry the request URL (``ClientResponseError``, ``InvalidURL``, payload errors...),
and a signed backend URL carries its checksum; an integration's callback URL may carry its own
tokens. Anything that leaves the request (log lines, a server's ``last_error`` in the admin API and
dashboard, flow annotations) goes through ``describe`` or ``redact`` first.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

# A query string in anything that looks like a URL, and any checksum= pair wherever it appears.
_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s'\"<>?#]*)\?[^\s'\"<>]*", re.IGNORECASE)
_CHECKSUM = re.compile(r"checksum(=|%3D)[^&\s'\"<>]*", re.IGNORECASE)
_SECRET_PARAMS = re.compile(r"(signed_parameters|password|moderatorPW|attendeePW)(=|%3D)[^&\s'\"<>]*",
                            re.IGNORECASE)
MAX_MESSAGE = 200


def redact(text: str) -> str:
    """``text`` with URL query strings and checksums replaced; bounded in length."""
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    text = _CHECKSUM.sub(r"checksum\1<redacted>", text)
    text = _SECRET_PARAMS.sub(r"\1\2<redacted>", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _os_reason(error: OSError | None) -> str:
    if error is None:
        return ""
    return error.strerror or type(error).__name__


def describe(exc: BaseException) -> str:
    """What went wrong, in words that name no URL: built from the exception's type and safe fields."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {_os_reason(exc.os_error) or 'cannot connect'}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientResponseError):
        # str() of these ends in url='...': keep the status and aiohttp's own reason only.
        reason = redact(" ".join(str(exc.message or "").split()))[:80]
        return f"bad answer: {exc.status} {reason}".rstrip()
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer cut short"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return f"connection error: {_os_reason(exc if isinstance(exc, OSError) else None) or type(exc).__name__}"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "answer cut short"
    if isinstance(exc, OSError):
        return f"network error: {_os_reason(exc)}"
    return f"request failed: {type(exc).__name__}"
