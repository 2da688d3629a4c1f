"""config.xml address rewriting: same answers as before, in linear time, off the loop when large."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from lb_core import configxml
from lb_core.configxml import rewrite_urls

SERVER = "http://10.0.0.5:8090/bigbluebutton/"
LB = "https://lb.example.org/bigbluebutton/"


def regex_rewrite(text: str, from_base: str, to_base: str) -> str:
    """The former regex rewrite (quadratic on some inputs): the reference for small ASCII texts."""
    source, target = urlsplit(from_base), urlsplit(to_base)
    host, netloc = source.hostname or "", source.netloc
    to_host = target.hostname or ""
    end = r"(?=[/\"'<\s?#]|$)"

    def swap(match: re.Match[str]) -> str:
        scheme = match.group(1)
        if scheme.lower() in ("http://", "https://"):
            return f"{target.scheme}://{target.netloc}"
        return f"{scheme}{to_host}"

    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://)" + re.escape(netloc) + end, swap, text, flags=re.I)
    if netloc != host:
        text = re.sub(r"(\b[a-z][a-z0-9+.-]*://)" + re.escape(host) + end, swap, text, flags=re.I)
        text = re.sub(r"(?<![\w.:/-])" + re.escape(netloc) + r"(?![\w.:-])", target.netloc, text)
    return re.sub(r'="' + re.escape(host) + '"', f'="{to_host}"', text)


CONFIG = """<config>
  <porttest host="10.0.0.5" application="video/portTest"/>
  <application uri="rtmp://10.0.0.5/bigbluebutton" host="http://10.0.0.5:8090/bigbluebutton/api/enter"/>
  <skinning url="HTTP://10.0.0.5:8090/client/branding/css/V2Theme.css.swf?v=7"/>
  <module name="Chat" uri="rtmp://10.0.0.5/bigbluebutton" translationOn="false" host="10.0.0.5:8090"/>
  <layout layoutConfig="http://10.0.0.5:80901/client/conf/layout.xml" other="http://10.0.0.55:8090/x"/>
</config>"""


def test_each_address_form_is_mapped() -> None:
    out = rewrite_urls(CONFIG, SERVER, LB)
    assert 'host="lb.example.org"' in out
    assert "rtmp://lb.example.org/bigbluebutton" in out
    assert "https://lb.example.org/bigbluebutton/api/enter" in out
    assert "https://lb.example.org/client/branding" in out
    assert 'host="lb.example.org"/>' in out  # the bare host:port
    assert "http://10.0.0.5:80901/" in out and "http://10.0.0.55:8090/x" in out  # other addresses untouched
    assert out == regex_rewrite(CONFIG, SERVER, LB)


def test_the_rewrite_can_be_undone() -> None:
    there = rewrite_urls(CONFIG, SERVER, LB)
    back = rewrite_urls(there, LB, SERVER)
    assert "lb.example.org" not in back
    assert rewrite_urls(back, SERVER, LB) == there


# Pieces that make the old patterns work hard, mixed with real addresses.
_FRAGMENTS = st.sampled_from([
    "a", "A", "z", "0", ".", "-", "+", "_", ":", "/", "//", "://", " ", '"', "'", "<", "?", "#", "=", "é",
    "http", "HTTPS", "rtmp", "10.0.0.5", "10.0.0.5:8090", "http://10.0.0.5:8090", "rtmp://10.0.0.5",
    '="10.0.0.5"', "lb.example.org", "x.http", ":8090",
])
_TEXTS = st.lists(_FRAGMENTS, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
def test_same_answers_as_the_regex_rewrite(text: str) -> None:
    assert rewrite_urls(text, SERVER, LB) == regex_rewrite(text, SERVER, LB)
    assert rewrite_urls(text, LB, SERVER) == regex_rewrite(text, LB, SERVER)


def _best_of(runs: int, work) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


ADVERSARIAL = [
    "a." * 20_000,  # a word boundary at every letter inside one long scheme-character run
    "a" * 40_000 + "://10.0.0.5:8090x",
    "://10.0.0.5:8090:" * 2_500,
    "http://10.0.0.5:8090/" * 2_000,
]


def test_a_40_kb_hostile_value_is_fast() -> None:
    """Today's regex took ~5 s on the first of these; the scan takes milliseconds."""
    for text in ADVERSARIAL:
        assert _best_of(1, lambda t=text: rewrite_urls(t, SERVER, LB)) < 0.5, text[:30]


def test_time_grows_linearly() -> None:
    """4x the input costs far less than the 16x a quadratic rewrite would (generous bound: 10x)."""
    for unit in ("a.", "http://10.0.0.5:8090/ ", "a" * 50 + "://10.0.0.5:8090x"):
        small = unit * (100_000 // len(unit))
        large = small * 4
        t_small = _best_of(3, lambda s=small: rewrite_urls(s, SERVER, LB))
        t_large = _best_of(3, lambda s=large: rewrite_urls(s, SERVER, LB))
        assert t_large < max(10 * t_small, 0.05), (unit, t_small, t_large)


async def test_large_texts_are_rewritten_off_the_event_loop() -> None:
    seen: list[bool] = []
    original = configxml.rewrite_urls

    def spy(text: str, from_base: str, to_base: str) -> str:
        seen.append(threading.current_thread() is threading.main_thread())
        return original(text, from_base, to_base)

    configxml.rewrite_urls = spy  # type: ignore[assignment]
    try:
        await configxml.rewrite_urls_off_loop("x" * 10, SERVER, LB)
        big = await configxml.rewrite_urls_off_loop("http://10.0.0.5:8090/ " * 5_000, SERVER, LB)
    finally:
        configxml.rewrite_urls = original  # type: ignore[assignment]
    assert seen == [True, False]
    assert big.startswith("https://lb.example.org/ ")
    assert asyncio.get_running_loop() is not None
