"""What follows a poll of a server: its listing cached, the participant counts per integration updated
from it, and a finished drain ended.

A poll's participant counts are those of the moment it was asked: joins placed after that are not in
them and stay counted on their own, so the time the listing was asked is kept until the poll ends.
"""

from __future__ import annotations

import time
from typing import Any

from lb_core.controls_servers import ServerOverrides
from lb_core.listings import ListingsCache
from lb_core.meetings import MeetingRegistry
from lb_core.policy import Policy
from lb_core.pool import Server


class PollFollowUp:
    def __init__(self, listings: ListingsCache, policy: Policy, meetings: MeetingRegistry,
                 overrides: ServerOverrides) -> None:
        self.listings = listings
        self.policy = policy
        self.meetings = meetings
        self.overrides = overrides
        self._asked_at: dict[str, float] = {}  # server -> when the poll being taken in was asked

    def on_listing(self, server: Server, root: Any, asked_at: float) -> object:
        """The monitor's ``on_listing``: the listing a poll read is cached for getMeetings."""
        self._asked_at[server.name] = asked_at
        return self.listings.remember(server, root, asked_at)

    async def after_poll(self, server: Server) -> None:
        """The monitor's ``after_poll``: the poll's participant counts per integration, then a drain ended."""
        asked_at = self._asked_at.pop(server.name, None)
        if asked_at is not None:
            self.policy.polled(server, self.meetings.on_server(server.name), asked_at)
        await self.overrides.after_poll(server)

    def after_view(self, server: Server) -> None:
        """Another process polled ``server``: the participant counts per integration follow its view."""
        self.policy.polled(server, self.meetings.on_server(server.name), time.monotonic())
