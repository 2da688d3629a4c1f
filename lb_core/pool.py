"""The servers behind the load balancer: what the poller learned of them and what operators set.

A ``Server`` is state only; what its load is (the formula and its costs) is the balancer's
(``lb_core.balancer.load``).

Status and disableState use the Mconf-LB numbers, so getServers answers as that LB did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any
from urllib.parse import urlsplit

from lb_core.balancer import load, missing_expected
from lb_core.config_sections import BalancerConfig, MonitorConfig, ServerConfig
from lb_core.safe_errors import redact


class Status(IntEnum):
    UNDEFINED = 0
    PENDING = 1
    UP = 2
    DOWN = 3
    UNREACHABLE = 4


class DisableState(IntEnum):
    ENABLED = 0
    DISABLED = 1
    AUTO = 3


@dataclass(slots=True)
class MeetingLoad:
    """One running meeting on a server, as the last poll saw it."""

    participants: int = 0
    voice: int = 0
    video: int = 0


@dataclass(slots=True)
class Server:
    """One BBB server as the LB knows it: its config, what operators set, its health from the polls and the
    counts of its meetings. State only: its load is the balancer's formula over these counts."""

    config: ServerConfig
    disable_state: DisableState = DisableState.AUTO
    draining: bool = False
    status: Status = Status.UNDEFINED
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_error: str = ""
    last_poll_at: float = 0.0
    poll_errors_total: int = 0
    meetings: dict[str, MeetingLoad] = field(default_factory=dict)
    # Meetings created since they were last seen by a poll: backend meetingID -> creation time.
    recent_creates: dict[str, float] = field(default_factory=dict)
    joins_since_poll: int = 0
    voice_bridges: set[str] = field(default_factory=set)  # in use on the server, as last polled
    _participants: int = 0
    _voice: int = 0
    _video: int = 0
    # What the balancer's load formula reads beyond the counts (lb_core.balancer.predicted_load):
    missing_expected: float = 0.0  # participants the new meetings a poll saw were expected to bring and had not
    unseen_creates: dict[str, float] = field(default_factory=dict)  # created, not yet seen by a poll
    unseen_created_sum: float = 0.0
    geoloc: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def base_url(self) -> str:
        """``scheme://host[:port]`` as the Mconf-LB shows it in ``url``."""
        parts = urlsplit(self.config.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def address(self) -> str:
        return urlsplit(self.config.url).hostname or ""

    @property
    def api_url(self) -> str:
        return self.config.url + "api"

    @property
    def healthy(self) -> bool:
        return self.status not in (Status.DOWN, Status.UNREACHABLE)

    # Totals are kept up to date as things change, so placing a meeting costs the same with 10
    # meetings known or 10,000 (it used to walk every meeting of every server).

    @property
    def participants(self) -> int:
        return self._participants + self.joins_since_poll

    @property
    def voice(self) -> int:
        return self._voice

    @property
    def video(self) -> int:
        return self._video

    @property
    def meeting_count(self) -> int:
        return len(self.meetings) + len(self.unseen_creates)

    def over_limits(self) -> str | None:
        limit = self.config.max_meetings
        if limit is not None and self.meeting_count >= limit:
            return f"at its meeting limit ({limit})"
        limit = self.config.max_participants
        if limit is not None and self.participants >= limit:
            return f"at its participant limit ({limit})"
        return None

    @property
    def auto_disabled(self) -> bool:
        return self.disable_state == DisableState.AUTO and (not self.healthy or self.over_limits() is not None)

    @property
    def is_disabled(self) -> bool:
        if self.disable_state == DisableState.DISABLED:
            return True
        if self.disable_state == DisableState.ENABLED:
            return False
        return self.auto_disabled

    def record_poll_success(
        self, meetings: dict[str, MeetingLoad], monitor: MonitorConfig, started: float, balancer: BalancerConfig
    ) -> None:
        """Take a poll's view; ``started`` is when the poll began (time.time())."""
        self.meetings = meetings
        self.joins_since_poll = 0
        self._participants = sum(m.participants for m in meetings.values())
        self._voice = sum(m.voice for m in meetings.values())
        self._video = sum(m.video for m in meetings.values())
        for meeting_id, created in list(self.recent_creates.items()):
            gone = meeting_id not in meetings and created < started
            if gone or started - created >= balancer.warmup_s:
                del self.recent_creates[meeting_id]
        self.missing_expected = missing_expected(self.recent_creates, meetings, started, balancer)
        self.unseen_creates = {m: c for m, c in self.recent_creates.items() if m not in meetings}
        self.unseen_created_sum = sum(self.unseen_creates.values())
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        self.last_error = ""
        self.last_poll_at = time.time()
        if self.status in (Status.UNDEFINED, Status.PENDING) or (
            self.status != Status.UP and self.consecutive_successes >= monitor.up_after
        ):
            self.status = Status.UP

    def record_poll_failure(self, error: str, unreachable: bool, monitor: MonitorConfig) -> None:
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        self.poll_errors_total += 1
        self.last_error = redact(error)  # shown by the admin API and dashboard: no signed URL
        self.last_poll_at = time.time()
        failed_status = Status.UNREACHABLE if unreachable else Status.DOWN
        if self.status in (Status.UNDEFINED, Status.PENDING) or self.consecutive_failures >= monitor.down_after:
            self.status = failed_status

    def note_create(self, backend_meeting_id: str, now: float) -> None:
        self.recent_creates[backend_meeting_id] = now
        if backend_meeting_id not in self.meetings and backend_meeting_id not in self.unseen_creates:
            self.unseen_creates[backend_meeting_id] = now
            self.unseen_created_sum += now

    def note_join(self) -> None:
        self.joins_since_poll += 1

    def note_end(self, backend_meeting_id: str) -> None:
        self.recent_creates.pop(backend_meeting_id, None)
        if (created := self.unseen_creates.pop(backend_meeting_id, None)) is not None:
            self.unseen_created_sum -= created
        if (gone := self.meetings.pop(backend_meeting_id, None)) is not None:
            self._participants -= gone.participants
            self._voice -= gone.voice
            self._video -= gone.video

    def summary(self, balancer: BalancerConfig, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.config.url,
            "status": self.status.name.lower(),
            "status_code": int(self.status),
            "disable_state": int(self.disable_state),
            "is_disabled": self.is_disabled,
            "draining": self.draining,
            "weight": self.config.weight,
            "meetings": self.meeting_count,
            "participants": self.participants,
            "voice": self.voice,
            "video": self.video,
            "load": round(load(self, balancer, now), 2),
            "last_error": self.last_error,
            "poll_errors_total": self.poll_errors_total,
        }


class Pool:
    """All servers by name, in the order they were configured or added."""

    def __init__(self, servers: list[ServerConfig]) -> None:
        self._servers: dict[str, Server] = {}
        for config in servers:
            self.add(config)

    def add(self, config: ServerConfig) -> Server:
        server = Server(config=config, disable_state=DisableState(config.disable_state))
        self._servers[config.name] = server
        return server

    def update_config(self, name: str, **changes: Any) -> Server:
        server = self._servers[name]
        server.config = ServerConfig.model_validate({**server.config.model_dump(), **changes})
        return server

    def remove(self, name: str) -> Server | None:
        return self._servers.pop(name, None)

    def get(self, name: str) -> Server | None:
        return self._servers.get(name)

    def find(self, name_or_address: str) -> Server | None:
        """A server by its name, its address, or its URL (how preferredServer names one)."""
        wanted = name_or_address.strip().lower().rstrip("/")
        for server in self._servers.values():
            if wanted in (server.name.lower(), server.address.lower(), server.base_url.lower(),
                          server.config.url.lower().rstrip("/"), server.api_url.lower()):
                return server
        return None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._servers.values()))

    def __len__(self) -> int:
        return len(self._servers)

    def names(self) -> list[str]:
        return list(self._servers)
