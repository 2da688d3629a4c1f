"""A meeting's life as the LB sees it: created, joined, ended, and every view of it kept in step.

The meeting map, the server's counters, the event log, the isMeetingRunning cache, the listings cache
and the recordings index all change together here, whoever notices the change (a call, a poll, an end
callback, an operator).
"""

from __future__ import annotations

import time

from lxml import etree

from lb_core import bbbxml
from lb_core.api import Call
from lb_core.backend import BackendClient, BackendError
from lb_core.config import Config
from lb_core.event_log import EventLog
from lb_core.forwarding import is_success
from lb_core.listings import ListingsCache
from lb_core.lru import LruCache
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.pool import Pool, Server
from lb_core.query import RawQuery, encode_value
from lb_core.recording_index import RecordingIndex

RUNNING_CACHE_MAX = 20_000


def now_ms() -> int:
    return int(time.time() * 1000)


class MeetingLifecycle:
    def __init__(self, config: Config, pool: Pool, meetings: MeetingRegistry, events: EventLog,
                 backend: BackendClient, listings: ListingsCache, recordings: RecordingIndex) -> None:
        self.config = config
        self.pool = pool
        self.meetings = meetings
        self.events = events
        self.backend = backend
        self.listings = listings
        self.recordings = recordings
        # isMeetingRunning answers per meeting key, briefly: integrations poll it while users wait.
        self.running: LruCache[str, tuple[float, bytes]] = LruCache(RUNNING_CACHE_MAX)

    async def created(self, call: Call, server: Server, root: etree._Element,
                      replaces: MeetingRecord | None = None) -> MeetingRecord:
        """A create succeeded on ``server``: record the meeting (``replaces``: the session it follows)."""
        if replaces is not None:
            await self.forget(replaces)
        created_at = now_ms()
        text = bbbxml.text_of
        event_id = self.events.created(
            integration=call.integration.name, meeting_id=call.param("meetingID"),
            name=call.param("name") or call.param("meetingID"), at=created_at, server_name=server.name,
            server_url=server.base_url, query=[p for p in call.pairs if p[0] != "checksum"],
        )
        record = MeetingRecord(
            integration=call.integration.name, meeting_id=call.param("meetingID"), server=server.name,
            created_at=created_at, name=call.param("name"), voice_bridge=text(root, "voiceBridge"),
            moderator_pw=text(root, "moderatorPW"), attendee_pw=text(root, "attendeePW"),
            internal_id=text(root, "internalMeetingID"), event_id=event_id,
        )
        self.running.pop(record.key, None)
        self.listings.forget(server.name)
        await self.meetings.save(record)
        if record.internal_id:
            self.recordings.learn(record.internal_id, server.name, record.integration)
        return record

    def joined(self, server: Server, record: MeetingRecord, call: Call, moderator: bool) -> None:
        server.note_join()
        self.running.pop(record.key, None)  # a cached running=false would now be wrong
        if record.event_id:
            self.events.joined(record.event_id, call.param("fullName"), "moderator" if moderator else "attendee",
                               now_ms())

    async def forget(self, record: MeetingRecord, ended_at: int | None = None) -> None:
        """The meeting ended (or its server is gone): every view of it goes."""
        self.running.pop(record.key, None)
        self.listings.forget(record.server)
        if await self.meetings.forget(record):
            server = self.pool.get(record.server)
            if server is not None:
                server.note_end(record.meeting_id)
            if record.event_id:
                self.events.ended(record.event_id, ended_at or now_ms())
            if self.meetings.cluster is not None and record.voice_bridge:
                await self.meetings.cluster.release_voice_bridge(record.server, record.voice_bridge)

    async def meeting_ended(self, integration: str, meeting_id: str, server: str) -> bool:
        """An end callback names this meeting: forget it if, and only if, its server confirms it ended.

        The callback URL's token sits in meeting metadata that clients can read, so the call itself
        proves nothing. False when the server still runs it or cannot be asked.
        """
        record = self.meetings.get(integration, meeting_id)
        holder = self.pool.get(server)
        if holder is None:
            return False
        query = RawQuery.parse("meetingID=" + encode_value(meeting_id))
        try:
            reply = await self.backend.call(holder.config, "getMeetingInfo", query.text,
                                            timeout_s=self.config.monitor.timeout_s)
            root = bbbxml.parse(reply.body)
        except (BackendError, bbbxml.XmlError):
            return False
        if is_success(root):
            ours = (root.findtext("metadata/mconflb-institution") == integration
                    and (record is None or not record.internal_id
                         or root.findtext("internalMeetingID") == record.internal_id))
            if ours and root.findtext("endTime") in (None, "", "0"):
                return False  # still there and not ended
        elif bbbxml.text_of(root, "messageKey") != "notFound":
            return False
        if record is not None and record.server == server:
            await self.forget(record)
        return True
