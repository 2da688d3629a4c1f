"""The getMeetings listings of each server, kept briefly and refreshed once however many callers wait.

Fed by the monitor's polls (``remember``) and by getMeetings calls (``current``); the LB's own changes
to a server's meetings (``forget``) make its next listing fresh.
"""

from __future__ import annotations

import asyncio
import time

from lxml import etree

from lb_core import bbbxml
from lb_core.config import Config
from lb_core.forwarding import Forwarder
from lb_core.pool import Pool, Server
from lb_core.query import RawQuery
from lb_core.trace import Trace


def owner_of(node: etree._Element) -> str:
    """Meetings and recordings carry the creating integration in their metadata; others are default's."""
    return node.findtext("metadata/mconflb-institution") or "default"


class Listing:
    """One server's getMeetings answer: (owning integration, meeting XML with its <server>) pairs, made once."""

    __slots__ = ("_meetings", "root", "server")

    def __init__(self, server: Server, root: etree._Element) -> None:
        self.server = server
        self.root: etree._Element | None = root
        self._meetings: list[tuple[str, str]] | None = None

    def meetings(self) -> list[tuple[str, str]]:
        if self._meetings is None:
            assert self.root is not None
            server, found = self.server, []
            for meeting in self.root.iterfind("meetings/meeting"):
                block = etree.SubElement(meeting, "server")
                etree.SubElement(block, "name").text = server.name
                etree.SubElement(block, "address").text = server.address
                etree.SubElement(block, "url").text = server.base_url
                found.append((owner_of(meeting), bbbxml.serialize(meeting)))
            self._meetings, self.root = found, None
        return self._meetings


class ListingsCache:
    def __init__(self, config: Config, pool: Pool, forwarder: Forwarder) -> None:
        self.config = config
        self.pool = pool
        self.forwarder = forwarder
        self._listings: dict[str, tuple[float, Listing]] = {}  # reused while young enough
        self._refreshing: dict[str, asyncio.Future[None]] = {}
        self._fresh: dict[str, Listing] = {}  # the latest answer per server, cached or not
        self._changed_at: dict[str, float] = {}

    def remember(self, server: Server, root: etree._Element, asked_at: float) -> Listing:
        """A server's getMeetings answer, kept for later getMeetings calls.

        ``asked_at`` (time.monotonic() when the request left): an answer asked for before the LB last
        changed that server's meetings is used once but not kept. The meetings are serialised only
        when a getMeetings needs them, not at every poll.
        """
        listing = Listing(server, root)
        if asked_at >= self._changed_at.get(server.name, 0.0):
            self._listings[server.name] = (asked_at, listing)
        return listing

    def forget(self, server_name: str) -> None:
        """The LB changed this server's meetings: its next getMeetings must be fresh."""
        self._listings.pop(server_name, None)
        self._changed_at[server_name] = time.monotonic()

    async def current(self, trace: Trace) -> dict[str, Listing]:
        """Server name -> listing for every live server: cached if young enough, else asked (once)."""
        max_age = self.config.get_meetings_cache_s
        now = time.monotonic()
        listings: dict[str, Listing] = {}
        stale: list[Server] = []
        for server in self.forwarder.fan_out_servers():
            cached = self._listings.get(server.name)
            if cached is not None and now - cached[0] <= max_age:
                listings[server.name] = cached[1]
            else:
                stale.append(server)
        if not stale:
            trace.route = "cached"
            return listings
        # One refresh per server at a time: concurrent callers wait for it rather than
        # each asking every server again (a burst of 32 callers x 50 servers otherwise).
        mine = [s for s in stale if s.name not in self._refreshing]
        if mine:
            refresh = asyncio.ensure_future(self._refresh(mine, trace))
            for server in mine:
                self._refreshing[server.name] = refresh
        waits = {id(f): f for s in stale if (f := self._refreshing.get(s.name)) is not None}
        await asyncio.gather(*waits.values(), return_exceptions=True)
        trace.route = "merged"
        for server in stale:
            if (fresh := self._fresh.get(server.name)) is not None:
                listings[server.name] = fresh
        return listings

    async def _refresh(self, servers: list[Server], trace: Trace) -> None:
        asked_at = time.monotonic()
        known = {s.name for s in self.pool}
        for table in (self._listings, self._fresh, self._changed_at):
            for gone in [name for name in table if name not in known]:  # servers removed from the pool
                del table[gone]
        for server in servers:
            self._fresh.pop(server.name, None)  # a server that fails now is left out, not shown as it was
        try:
            for server, root in await self.forwarder.fan_out("getMeetings", RawQuery.parse(""), trace, servers):
                self._fresh[server.name] = self.remember(server, root, asked_at)
        finally:
            for server in servers:
                self._refreshing.pop(server.name, None)
