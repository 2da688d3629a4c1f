"""Several processes on one Redis store: a change notice told by any of them is applied here.

The outgoing side is each owner's ``tell`` (``ServerOverrides``, ``Integrations``, ``RuleControls``,
``MeetingRegistry.share``); this is the incoming side: what this process has cached about the changed
thing is dropped or read again from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from lb_core.cluster import Cluster
from lb_core.config import Config
from lb_core.controls_rules import load_global_rules
from lb_core.controls_servers import ServerOverrides
from lb_core.integrations import Integrations
from lb_core.lifecycle import MeetingLifecycle
from lb_core.listings import ListingsCache
from lb_core.meetings import MeetingRegistry
from lb_core.policy import Policy
from lb_core.recording_index import RecordingIndex
from lb_core.store import Store


class ChangeRelay:
    def __init__(self, cluster: Cluster, config: Config, store: Store, meetings: MeetingRegistry,
                 overrides: ServerOverrides, integrations: Integrations, policy: Policy,
                 lifecycle: MeetingLifecycle, listings: ListingsCache, poll_soon: Callable[[], None],
                 recordings: RecordingIndex | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self.store = store
        self.meetings = meetings
        self.overrides = overrides
        self.integrations = integrations
        self.policy = policy
        self.lifecycle = lifecycle
        self.listings = listings
        self.poll_soon = poll_soon
        self.recordings = recordings

    def listen(self) -> None:
        """Meetings changed here are told to every process; notices from all of them are applied here."""
        cluster = self.cluster

        async def meeting_changed(key: str) -> None:
            await cluster.publish("meeting", key)

        self.meetings.share(cluster, meeting_changed)
        if self.recordings is not None:  # each write to the index: every process reads that recording again
            self.recordings.on_change = partial(cluster.publish, "recording")
        cluster.on_change = self.changed
        cluster.listen()

    async def changed(self, kind: str, subject: str) -> None:
        """A change notice (from any process, this one included): drop what is cached about it."""
        if kind == "meeting":
            before = self.meetings.by_key(subject)
            record = await self.meetings.refresh_key(subject)
            self.lifecycle.running.pop(subject, None)
            for server in {r.server for r in (before, record) if r is not None}:
                self.listings.forget(server)
        elif kind == "servers":
            await self.overrides.apply()
            self.poll_soon()
        elif kind == "integrations":
            await self.integrations.load()
        elif kind == "recording" and self.recordings is not None:
            await self.recordings.refresh(subject)
        elif kind == "rules":
            self.policy.set_global_rules(self.config.rules)
            await load_global_rules(self.store, self.policy)
        elif kind == "all":
            await self.meetings.reload()
            await self.overrides.apply()
            await self.integrations.load()
            self.lifecycle.running.clear()
            if self.recordings is not None:
                await self.recordings.reload()
