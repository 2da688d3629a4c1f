"""config.xml address rewriting (``getDefaultConfigXML``, ``setConfigXML``) in linear time.

config.xml names a server as ``http(s)://host[:port]``, ``rtmp://host``, a bare ``host:port`` or a bare
``host`` attribute value; each form is mapped from one origin to another so the LB's rewrite can be
undone exactly. The text comes from integrations and backends, so it is scanned with plain string
searches: no pattern with backtracking, and the work is linear in the size of the text. Large texts
are rewritten in a worker thread so one big document never holds up other tenants' calls.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

# Above this size the rewrite runs in a worker thread instead of on the event loop.
OFF_LOOP_CHARS = 32 * 1024

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_URL_END = frozenset("/\"'<?#")  # or whitespace, or the end of the text


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _ends_address(text: str, index: int) -> bool:
    return index >= len(text) or text[index] in _URL_END or text[index].isspace()


def _scheme_start(text: str, colon: int, floor: int) -> int | None:
    """Where the URL scheme ending at ``colon`` (the ``:`` of ``://``) starts, or None without one.

    The scheme is the leftmost start in the run of scheme characters before ``colon`` that is a
    letter at a word boundary. The backward walk stops at ``floor`` (the end of the previous
    replacement), so runs walked for different matches never overlap: the pass stays linear.
    """
    run = colon
    while run > floor and text[run - 1] in _SCHEME_CHARS:
        run -= 1
    for start in range(run, colon):
        if text[start] not in _LETTERS:
            continue
        before = text[start - 1] if start > 0 else ""
        if not before or not _is_word(before):
            return start
    return None


def _replace_urls(text: str, netloc: str, target_scheme: str, target_netloc: str, target_host: str) -> str:
    """Replace ``scheme://netloc`` (netloc compared case-insensitively) when the address ends there.

    http(s) URLs get the target's scheme and address; other schemes (rtmp) keep theirs and get the host.
    """
    if not netloc:
        return text
    needle = ("://" + netloc).lower()
    folded = text.lower() if text.isascii() else None  # lower() keeps ASCII lengths; else compare slices
    out: list[str] = []
    done = 0  # text[:done] is already in out
    search = 0
    while True:
        colon = folded.find(needle, search) if folded is not None else _find_folded(text, needle, search)
        if colon < 0:
            break
        after = colon + len(needle)
        start = _scheme_start(text, colon, done) if _ends_address(text, after) else None
        if start is None:
            search = colon + 1
            continue
        scheme = text[start:colon].lower()
        out.append(text[done:start])
        if scheme in ("http", "https"):
            out.append(f"{target_scheme}://{target_netloc}")
        else:
            out.append(f"{text[start:colon]}://{target_host}")
        done = search = after
    out.append(text[done:])
    return "".join(out)


def _find_folded(text: str, needle: str, start: int) -> int:
    """``text.lower().find(needle, start)`` for text whose lower-casing could change its length."""
    first = needle[0]  # ":" : its case never changes
    while True:
        index = text.find(first, start)
        if index < 0:
            return -1
        if text[index:index + len(needle)].lower() == needle:
            return index
        start = index + 1


def _replace_bare(text: str, netloc: str, target_netloc: str) -> str:
    """Replace a bare ``host:port`` that is not part of a longer name, address or URL."""
    out: list[str] = []
    done = 0
    search = 0
    while True:
        index = text.find(netloc, search)
        if index < 0:
            break
        after = index + len(netloc)
        before_ok = index == 0 or not (_is_word(text[index - 1]) or text[index - 1] in ".:/-")
        after_ok = after >= len(text) or not (_is_word(text[after]) or text[after] in ".:-")
        if before_ok and after_ok:
            out.append(text[done:index])
            out.append(target_netloc)
            done = search = after
        else:
            search = index + 1
    out.append(text[done:])
    return "".join(out)


def rewrite_urls(text: str, from_base: str, to_base: str) -> str:
    """Point every address of one origin (``from_base``) at another (``to_base``) in linear time."""
    source, target = urlsplit(from_base), urlsplit(to_base)
    host, netloc = source.hostname or "", source.netloc
    to_host = target.hostname or ""
    if not host:
        return text
    text = _replace_urls(text, netloc, target.scheme, target.netloc, to_host)
    if netloc != host:
        text = _replace_urls(text, host, target.scheme, target.netloc, to_host)
        text = _replace_bare(text, netloc, target.netloc)
    return text.replace(f'="{host}"', f'="{to_host}"')


async def rewrite_urls_off_loop(text: str, from_base: str, to_base: str) -> str:
    """``rewrite_urls``, in a worker thread when the text is large enough to be felt by other calls."""
    if len(text) <= OFF_LOOP_CHARS:
        return rewrite_urls(text, from_base, to_base)
    return await asyncio.to_thread(rewrite_urls, text, from_base, to_base)
