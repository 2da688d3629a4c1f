"""What a handler works with: the verified call, its trace, and the LB's services.

Checks that several calls share are declared once here (``require_meeting``, ``server_of``), each
raising BBB's own error, so a handler reads as the rule it implements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from lb_core import bbbxml, errors
from lb_core.api import Answer, Call
from lb_core.backend import BackendClient
from lb_core.calls import CallSpec
from lb_core.config import Config
from lb_core.event_log import EventLog
from lb_core.forwarding import Forwarder
from lb_core.lifecycle import MeetingLifecycle
from lb_core.listings import ListingsCache
from lb_core.meeting_creates import CreateCoordinator
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.placement import Placer
from lb_core.policy import Policy
from lb_core.pool import Pool, Server
from lb_core.query import RawQuery
from lb_core.recording_index import RecordingIndex
from lb_core.trace import Trace

if TYPE_CHECKING:
    from lb_core.callbacks import Callbacks
    from lb_core.recording_service import Recordings

# bbb-web resolves a meetingID of this shape (sha1 hex, a dash, the creation time in ms) to the meeting with
# that internal ID, whoever created it: such IDs are never created through the LB, nor routed.
INTERNAL_MEETING_ID = re.compile(r"\s*[0-9a-fA-F]{40}-[0-9]+\s*")


RESERVED_META = {
    "mconflb-guid", "mconflb-institution", "mconflb-institution-name",
    "mconflb-rec-server", "mconflb-rec-server-url", "mconflb-rec-server-key",
}
# Every ``meta_mconflb-*`` (any case) is the LB's: an integration setting one could claim another's meeting.
RESERVED_META_PREFIX = "mconflb-"


def is_internal_meeting_id(meeting_id: str) -> bool:
    return INTERNAL_MEETING_ID.fullmatch(meeting_id) is not None


def has_reserved_meta(call: Call) -> bool:
    """An integration may not set the LB's own metadata (on create, nor on updateRecordings)."""
    return any(key.startswith(RESERVED_META_PREFIX) for key in call.meta())


@dataclass(slots=True)
class Services:
    """The LB's parts a handler may use; built once, in dependency order, by ``service.LoadBalancer``."""

    config: Config
    pool: Pool
    meetings: MeetingRegistry
    creates: CreateCoordinator  # creates under way, and their order
    events: EventLog
    backend: BackendClient
    forwarder: Forwarder
    listings: ListingsCache
    recordings: RecordingIndex
    lifecycle: MeetingLifecycle
    placer: Placer
    callbacks: Callbacks | None
    instance_id: str
    policy: Policy = field(default_factory=Policy)  # rules, participant counts, refusals by limit
    recording_changes: Recordings | None = None  # publish, unpublish, delete, update: the index, then the origin


@dataclass(slots=True)
class Context:
    """One verified call on its way to an answer."""

    call: Call
    trace: Trace
    spec: CallSpec
    services: Services

    def meeting_or_none(self) -> MeetingRecord | None:
        """The meeting the calling integration created under this ID: the only way a call reaches a backend.

        An internal-ID-shaped meetingID is never routed, even if an older version recorded one: bbb-web
        would resolve it to whichever meeting has that internal ID.
        """
        meeting_id = self.call.param("meetingID")
        if not meeting_id:
            raise errors.missing_meeting_id()
        if is_internal_meeting_id(meeting_id):
            return None
        return self.services.meetings.get(self.call.integration.name, meeting_id)

    def require_meeting(self) -> MeetingRecord:
        """The call's meeting, or BBB's notFound answer."""
        record = self.meeting_or_none()
        if record is None:
            raise errors.not_found()
        return record

    def server_of(self, record: MeetingRecord) -> Server:
        """The healthy server of a known meeting, or serverUnavailable."""
        server = self.services.pool.get(record.server)
        if server is None or not server.healthy:
            raise errors.server_unavailable()
        return server

    def server_named(self, name: str) -> Server:
        server = self.services.pool.get(name)
        if server is None:
            raise errors.server_unavailable()
        return server

    async def routed(self, server: Server, query: RawQuery | None = None,
                     **kwargs: Any) -> tuple[Answer, etree._Element | None]:
        """Forward this call to ``server`` and relay its answer (XML parsed, unless the call is JSON)."""
        return await self.services.forwarder.routed(server, self.call, self.trace, query, json=self.spec.json,
                                                    **kwargs)

    def success(self, fields: list[tuple[str, Any]]) -> Answer:
        """A SUCCESS answer the LB writes itself."""
        self.trace.result = "SUCCESS"
        return Answer.xml(bbbxml.success(fields))
