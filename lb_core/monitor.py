"""The poller: asks every server for its meetings and load, and learns which meetings ended.

It runs as one background task, polls servers concurrently (bounded), and never blocks the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lb_core import bbbxml
from lb_core.backend import BackendClient, BackendError
from lb_core.config import Config
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.pool import MeetingLoad, Pool, Server, Status
from lb_core.safe_errors import describe, redact

log = logging.getLogger("bbb_lb.monitor")


def _count(node, tag: str) -> int:  # type: ignore[no-untyped-def]
    text = (node.findtext(tag) or "0").strip()
    return int(text) if text.isdigit() else 0


def read_listing(body: bytes) -> tuple[Any, dict[str, MeetingLoad], set[str]]:
    """A getMeetings answer: the parsed root, each running meeting's load, the voice bridges in use.

    A FAILED answer gives ``(None, {}, {messageKey})``.
    """
    root = bbbxml.parse(body)
    if bbbxml.returncode(root) != "SUCCESS":
        return None, {}, {bbbxml.text_of(root, "messageKey")}
    meetings: dict[str, MeetingLoad] = {}
    bridges: set[str] = set()
    for meeting in root.iterfind("meetings/meeting"):
        meeting_id = meeting.findtext("meetingID") or ""
        if (meeting.findtext("hasBeenForciblyEnded") or "") == "true" or meeting.findtext("endTime") not in (
            None, "", "0"
        ):
            continue
        meetings[meeting_id] = MeetingLoad(
            participants=_count(meeting, "participantCount"),
            voice=_count(meeting, "voiceParticipantCount"),
            video=_count(meeting, "videoCount"),
        )
        if bridge := (meeting.findtext("voiceBridge") or "").strip():
            bridges.add(bridge)
    return root, meetings, bridges


class Monitor:
    def __init__(self, config: Config, pool: Pool, meetings: MeetingRegistry, backend: BackendClient,
                 forget: Callable[[MeetingRecord, int | None], Awaitable[None]],
                 after_poll: Callable[[Server], Awaitable[None]] | None = None,
                 on_listing: Callable[[Server, Any, float], object] | None = None) -> None:
        self.config = config
        self.pool = pool
        self.meetings = meetings
        self.backend = backend
        self.forget = forget
        self.after_poll = after_poll
        self.on_listing = on_listing
        self.polls_total = 0
        self._task: asyncio.Task[None] | None = None
        self._semaphore = asyncio.Semaphore(config.monitor.concurrency)
        self._wake = asyncio.Event()
        # What one round does: poll every server; several processes sharing the pool replace it
        # (shared_poller.SharedPoller: one polls, the others read its view).
        self.round: Callable[[], Awaitable[None]] = self.poll_all

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bbb-lb-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poll_soon(self) -> None:
        """Poll now rather than at the next interval (a server was added or re-enabled)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except Exception as exc:  # no traceback: its text could hold a signed URL
                log.error("poll round failed: %s: %s", type(exc).__name__, redact(str(exc)))
            delay = max(0.0, self.config.monitor.interval_s - (time.monotonic() - started))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self._bounded(server) for server in self.pool))
        self.polls_total += 1

    async def _bounded(self, server: Server) -> None:
        async with self._semaphore:
            await self.poll(server)

    async def poll(self, server: Server) -> None:
        monitor = self.config.monitor
        started = time.time()
        if server.status == Status.UNDEFINED:
            server.status = Status.PENDING
        asked_at = time.monotonic()
        try:
            reply = await self.backend.call(server.config, "getMeetings", "", timeout_s=monitor.timeout_s)
        except BackendError as exc:
            self._failed(server, str(exc), unreachable=exc.refused or exc.timeout)
            return
        except Exception as exc:  # whatever the client raised, its text is not shown as it is
            self._failed(server, describe(exc), unreachable=False)
            return
        if reply.status != 200:
            self._failed(server, f"HTTP {reply.status}", unreachable=False)
            return
        # Parsing a busy server's listing is real work: do it in a thread, not on the proxy's loop.
        try:
            root, meetings, bridges = await asyncio.to_thread(read_listing, reply.body)
        except bbbxml.XmlError as exc:
            self._failed(server, f"unreadable answer: {redact(str(exc))}", unreachable=False)
            return
        if root is None:
            self._failed(server, f"FAILED {bridges.pop() if bridges else ''}", unreachable=False)
            return
        if self.on_listing is not None:
            self.on_listing(server, root, asked_at)
        was = server.status
        server.record_poll_success(meetings, monitor, started, self.config.balancer)
        server.voice_bridges = bridges
        if was != server.status:
            log.info("server %s is %s", server.name, server.status.name.lower())
        # Meetings the LB placed here that the server no longer has have ended.
        created_before_poll = int(started * 1000)
        for record in self.meetings.on_server(server.name):
            if record.meeting_id not in meetings and record.created_at < created_before_poll:
                await self.forget(record, None)
        if self.after_poll is not None:
            await self.after_poll(server)

    def _failed(self, server: Server, error: str, *, unreachable: bool) -> None:
        was = server.status
        server.record_poll_failure(error, unreachable, self.config.monitor)
        if was != server.status:
            log.warning("server %s is %s: %s", server.name, server.status.name.lower(), error)
