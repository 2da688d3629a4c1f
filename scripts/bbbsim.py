#!/usr/bin/env python3
"""Simulated BigBlueButton 2.7/3.0 servers, many in one process, for the load balancer's tests.

Each server listens on its own port and answers the BBB API the way bbb-web does wherever a load
balancer could tell the difference (see the BBB API contract notes): checksums over the raw query, the
duplicate-create rules, join redirects, end and recording-ready callbacks, recordings. A JSON control
API (loopback only) lets a test add participants and recordings, end meetings from inside, read the
request log and inject faults (refused connections, 503, hangs, slowness).

    python scripts/bbbsim.py --servers 3 --base-port 9001 --control-port 9000
    python scripts/bbbsim.py --spec servers.json --control-port 0

It is importable too (``sys.path.insert(0, "scripts"); import bbbsim``) and never imports mitmproxy:
``cluster = await bbbsim.start_cluster(specs, control_port=0)`` ... ``await cluster.stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.parser
import email.policy
import hashlib
import html
import json
import logging
import random
import re
import resource
import signal
import string
import sys
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
from aiohttp import ClientSession, ClientTimeout, web
from aiohttp.http_exceptions import HttpProcessingError

try:
    from lb_core import bbbxml, checksum, errors
    from lb_core.errors import ApiError
    from lb_core.query import RawQuery
except ImportError:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lb_core import bbbxml, checksum, errors
    from lb_core.errors import ApiError
    from lb_core.query import RawQuery

__all__ = [
    "ALL_ALGORITHMS",
    "FAULT_MODES",
    "Attendee",
    "Meeting",
    "Recording",
    "ServerSpec",
    "SimCluster",
    "SimServer",
    "main",
    "specs_for",
    "start_cluster",
]

log = logging.getLogger("bbbsim")
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)  # test secrets are short on purpose

ALL_ALGORITHMS: tuple[str, ...] = tuple(checksum.ALGORITHMS)
FAULT_MODES = ("ok", "refuse", "503", "hang", "slow")
HANG_CAP_SECONDS = 300.0  # a hung request is dropped after this, so no handler lives forever
REQUEST_LOG_SIZE = 2000
MAX_BODY_BYTES = 64 * 1024 * 1024  # pre-uploaded slides can be large; more is answered FAILED
MAX_URL_BYTES = 1024 * 1024  # BBB behind nginx takes long URLs; let them reach the XML answers
CALLBACK_TIMEOUT_SECONDS = 10.0
DEFAULT_DIAL_NUMBER = "613-555-1234"
BBB_VERSION = "2.7.99-sim"

DUPLICATE_MESSAGE = "This conference was already in existence and may currently be in progress."
ID_NOT_UNIQUE_MESSAGE = "A meeting already exists with that meeting ID.  Please use a different meeting ID."
# Text as in the contract; bbb-web's own source has two spaces after "sent." (see the report).
END_MESSAGE = (
    "A request to end the meeting was sent. Please wait a few seconds, and then use the "
    "getMeetingInfo or isMeetingRunning API calls to verify that it was ended."
)
FORCIBLY_ENDED_MESSAGE = (
    "You can not re-join a meeting that has been forcibly ended.  However, once the meeting is removed "
    "from memory (according to the timeout configured on this server) you will be able to once again "
    "create a meeting with the same meeting ID."
)

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
XML_TYPES = frozenset({"application/xml", "text/xml"})
JSON_HEADERS = {"Content-Type": "application/json;charset=utf-8", "Cache-Control": "no-cache"}

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_random = random.SystemRandom()


def _token(length: int) -> str:
    """Lowercase alphanumerics, like RandomStringUtils.randomAlphanumeric(n).toLowerCase()."""
    return "".join(_random.choices(_TOKEN_ALPHABET, k=length))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _java_date(millis: int) -> str:
    """java.util.Date.toString() in UTC, the format of createDate."""
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(millis / 1000))


def _is_true(value: str | None) -> bool:
    """Java's Boolean.parseBoolean: only "true" (any case) is true."""
    return value is not None and value.strip().lower() == "true"


def _int_param(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default  # type: ignore[arg-type]
    except ValueError:
        return default


def _id_list(value: str | None) -> list[str]:
    """A comma list as bbb-web decodes it (empty entries dropped)."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _xml_names(mapping: dict[str, str]) -> list[tuple[str, str]]:
    """Entries whose key can be an element name; bbb-web would emit broken XML for the others."""
    return [(key, value) for key, value in mapping.items() if _XML_NAME.match(key)]


def _append_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers=bbbxml.XML_HEADERS)


def _json_api(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps({"response": payload}).encode(), status=status, headers=JSON_HEADERS)


# --------------------------------------------------------------------------------------------------
# Specs and state


@dataclass
class ServerSpec:
    """One simulated server: where it listens, its secret and which API generation it imitates."""

    name: str
    url: str
    secret: str
    checksum_algorithms: tuple[str, ...] = ALL_ALGORITHMS
    config_xml: bool = True  # False imitates 2.4+, where getDefaultConfigXML/setConfigXML are gone
    recording_ready_delay: float = 0.2
    # Where this server "publishes" its recordings as BBB does (<dir>/<format>/<recordID>/metadata.xml
    # plus playback files); None: recordings exist only in the API.
    published_dir: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"server {self.name!r}: url must be http://host:port/path/, got {self.url!r}")
        if not self.url.endswith("/"):
            self.url += "/"
        self.checksum_algorithms = tuple(self.checksum_algorithms)
        unknown = set(self.checksum_algorithms) - set(ALL_ALGORITHMS)
        if unknown:
            raise ValueError(f"server {self.name!r}: unknown checksum algorithms {sorted(unknown)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, recording_ready_delay: float | None = None) -> ServerSpec:
        """A spec from one entry of a --spec JSON file."""
        if not isinstance(data, dict):
            raise ValueError(f"server spec must be an object, got {data!r}")
        try:
            name, url, secret = str(data["name"]), str(data["url"]), str(data["secret"])
        except KeyError as missing:
            raise ValueError(f"server spec lacks {missing}") from None
        delay = data.get("recording_ready_delay", recording_ready_delay)
        return cls(
            name=name,
            url=url,
            secret=secret,
            checksum_algorithms=tuple(data.get("checksum_algorithms") or ALL_ALGORITHMS),
            config_xml=bool(data.get("config_xml", True)),
            recording_ready_delay=0.2 if delay is None else float(delay),
            published_dir=str(data["published_dir"]) if data.get("published_dir") else None,
        )


def specs_for(
    count: int,
    *,
    host: str = "127.0.0.1",
    base_port: int = 9001,
    secret_prefix: str = "secret-",
    recording_ready_delay: float = 0.2,
    published_dir: str | None = None,
) -> list[ServerSpec]:
    """bbb1..bbbN on consecutive ports (base_port 0: every server on a free port); ``published_dir``: each
    server publishes its recordings under ``<published_dir>/<name>``."""
    return [
        ServerSpec(
            name=f"bbb{i}",
            url=f"http://{host}:{base_port + i - 1 if base_port else 0}/bigbluebutton/",
            secret=f"{secret_prefix}{i}",
            recording_ready_delay=recording_ready_delay,
            published_dir=str(Path(published_dir) / f"bbb{i}") if published_dir else None,
        )
        for i in range(1, count + 1)
    ]


@dataclass
class Attendee:
    user_id: str
    full_name: str
    role: str
    is_presenter: bool = False
    listening_only: bool = False
    voice: bool = False
    video: bool = False
    client_type: str = "HTML5"
    custom: dict[str, str] = field(default_factory=dict)


@dataclass
class Meeting:
    meeting_id: str
    internal_id: str
    name: str
    attendee_pw: str
    moderator_pw: str
    create_time: int
    voice_bridge: str
    dial_number: str = DEFAULT_DIAL_NUMBER
    duration: int = 0
    record: bool = False
    max_users: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    parent_id: str = "bbb-none"
    is_breakout: bool = False
    sequence: int = 0
    free_join: bool = False
    breakout_rooms: list[str] = field(default_factory=list)
    meeting_ended_url: str = ""
    running: bool = False
    has_user_joined: bool = False
    forcibly_ended: bool = False
    ended: bool = False
    start_time: int = 0
    end_time: int = 0
    max_seen: int = 0
    documents: int = 0
    attendees: list[Attendee] = field(default_factory=list)
    chat: list[dict[str, str]] = field(default_factory=list)
    config_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def create_date(self) -> str:
        return _java_date(self.create_time)

    def info_fields(self) -> list[tuple[str, Any]]:
        """getMeetingInfo / getMeetings <meeting> fields, in bbb-web's template order."""
        fields: list[tuple[str, Any]] = [
            ("meetingName", self.name),
            ("meetingID", self.meeting_id),
            ("internalMeetingID", self.internal_id),
            ("createTime", self.create_time),
            ("createDate", self.create_date),
            ("voiceBridge", self.voice_bridge),
            ("dialNumber", self.dial_number),
        ]
        if self.attendee_pw:
            fields.append(("attendeePW", self.attendee_pw))
        if self.moderator_pw:
            fields.append(("moderatorPW", self.moderator_pw))
        users = self.attendees
        fields += [
            ("running", self.running),
            ("duration", self.duration),
            ("hasUserJoined", self.has_user_joined),
            ("recording", self.record),
            ("hasBeenForciblyEnded", self.forcibly_ended),
            ("startTime", self.start_time),
            ("endTime", self.end_time),
            ("participantCount", len(users)),
            ("listenerCount", sum(a.listening_only for a in users)),
            ("voiceParticipantCount", sum(a.voice for a in users)),
            ("videoCount", sum(a.video for a in users)),
            ("maxUsers", self.max_users),
            ("moderatorCount", sum(a.role == "MODERATOR" for a in users)),
            ("attendees", [("attendee", _attendee_fields(a)) for a in users]),
            ("metadata", _xml_names(self.metadata)),
            ("isBreakout", self.is_breakout),
        ]
        if self.is_breakout:
            fields += [
                ("parentMeetingID", self.parent_id),
                ("sequence", self.sequence),
                ("freeJoin", self.free_join),
            ]
        if self.breakout_rooms:
            fields.append(("breakoutRooms", [("breakout", room) for room in self.breakout_rooms]))
        return fields

    def create_fields(self, message_key: str = "", message: str = "") -> list[tuple[str, Any]]:
        """The create answer, in bbb-web's template order (messageKey/message always present)."""
        fields: list[tuple[str, Any]] = [
            ("meetingID", self.meeting_id),
            ("internalMeetingID", self.internal_id),
            ("parentMeetingID", self.parent_id),
        ]
        if self.attendee_pw:
            fields.append(("attendeePW", self.attendee_pw))
        if self.moderator_pw:
            fields.append(("moderatorPW", self.moderator_pw))
        return fields + [
            ("createTime", self.create_time),
            ("voiceBridge", self.voice_bridge),
            ("dialNumber", self.dial_number),
            ("createDate", self.create_date),
            ("hasUserJoined", self.has_user_joined),
            ("duration", self.duration),
            ("hasBeenForciblyEnded", self.forcibly_ended),
            ("messageKey", message_key),
            ("message", message),
        ]


def _attendee_fields(attendee: Attendee) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = [
        ("userID", attendee.user_id),
        ("fullName", attendee.full_name),
        ("role", attendee.role),
        ("isPresenter", attendee.is_presenter),
        ("isListeningOnly", attendee.listening_only),
        ("hasJoinedVoice", attendee.voice),
        ("hasVideo", attendee.video),
        ("clientType", attendee.client_type),
    ]
    if attendee.custom:
        fields.append(("customdata", _xml_names(attendee.custom)))
    return fields


@dataclass
class Recording:
    record_id: str
    meeting_id: str
    internal_meeting_id: str
    name: str
    playback_url: str
    state: str = "published"
    published: bool = True
    is_breakout: bool = False
    start_time: int = 0
    end_time: int = 0
    participants: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    text_tracks: list[dict[str, str]] = field(default_factory=list)

    def fields(self) -> list[tuple[str, Any]]:
        length_minutes = max(0, (self.end_time - self.start_time) // 60000)
        return [
            ("recordID", self.record_id),
            ("meetingID", self.meeting_id),
            ("internalMeetingID", self.internal_meeting_id),
            ("name", self.name),
            ("isBreakout", self.is_breakout),
            ("published", self.published),
            ("state", self.state),
            ("startTime", self.start_time),
            ("endTime", self.end_time),
            ("participants", self.participants),
            ("metadata", _xml_names(self.metadata)),
            (
                "playback",
                [
                    (
                        "format",
                        [
                            ("type", "presentation"),
                            ("url", self.playback_url),
                            ("processingTime", 1234),
                            ("length", length_minutes),
                        ],
                    )
                ],
            ),
        ]


PLAYBACK_VIDEO_BYTES = 256 * 1024


def write_published(recording: Recording, root: Path) -> Path:
    """Publish a recording as BBB does: ``<root>/presentation/<recordID>/`` with metadata.xml, a player
    page, a webcam video (bytes that vary along the file, so ranges can be checked) and a thumbnail."""
    folder = root / "presentation" / recording.record_id
    (folder / "video").mkdir(parents=True, exist_ok=True)
    (folder / "thumbnails").mkdir(exist_ok=True)
    video = bytes((i * 7 + i // 251) % 256 for i in range(PLAYBACK_VIDEO_BYTES))
    (folder / "video" / "webcams.webm").write_bytes(video)
    (folder / "thumbnails" / "thumb-1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (folder / "index.html").write_text(
        f"<!DOCTYPE html><html><body><h1>Playback of {html.escape(recording.record_id)}</h1></body></html>",
        encoding="utf-8")
    meta = "".join(f"<{k}>{html.escape(v, quote=False)}</{k}>" for k, v in recording.metadata.items()
                   if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", k) and not k.lower().startswith("xml"))
    esc = html.escape
    duration = max(0, recording.end_time - recording.start_time)
    size = PLAYBACK_VIDEO_BYTES + 72
    (folder / "metadata.xml").write_text(
        "<?xml version=\"1.0\"?>\n<recording>"
        f"<id>{esc(recording.record_id)}</id><state>{esc(recording.state)}</state>"
        f"<published>{'true' if recording.published else 'false'}</published>"
        f"<start_time>{recording.start_time}</start_time><end_time>{recording.end_time}</end_time>"
        f"<participants>{recording.participants}</participants><raw_size>{size * 3}</raw_size>"
        f'<meeting id="{esc(recording.internal_meeting_id)}" externalId="{esc(recording.meeting_id)}" '
        f'name="{esc(recording.name)}" breakout="{"true" if recording.is_breakout else "false"}"/>'
        f"<meta>{meta}</meta>"
        f"<playback><format>presentation</format><link>{esc(recording.playback_url)}</link>"
        f"<processing_time>1234</processing_time><duration>{duration}</duration>"
        f'<extensions><preview><images><image width="176" height="136" alt="Welcome">'
        f"{esc(recording.playback_url)}/thumbnails/thumb-1.png</image></images></preview></extensions>"
        f"<size>{size}</size></playback></recording>\n",
        encoding="utf-8")
    return folder


@dataclass
class _Session:
    token: str
    meeting_id: str
    internal_meeting_id: str
    user_id: str
    full_name: str
    role: str


@dataclass
class _Call:
    """One API request after transport-level checks: what a handler needs."""

    request: web.Request
    name: str
    params: dict[str, str]
    body: bytes
    content_type: str


@dataclass(frozen=True)
class _CallInfo:
    handler: Callable[[SimServer, _Call], Awaitable[web.StreamResponse]]
    methods: frozenset[str]
    content_types: frozenset[str]
    json: bool = False


# --------------------------------------------------------------------------------------------------
# One server


class SimServer:
    """One simulated BBB server with its own port, state, request log and fault mode."""

    def __init__(self, spec: ServerSpec, cluster: SimCluster) -> None:
        self.spec = spec
        self.cluster = cluster
        parts = urlsplit(spec.url)
        self.host: str = parts.hostname or "127.0.0.1"
        self.port: int = 80 if parts.port is None else parts.port
        self.base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.api_path = self.base_path + "api"
        self.meetings: dict[str, Meeting] = {}
        self.recordings: dict[str, Recording] = {}
        self.sessions: dict[str, _Session] = {}
        self.config_xmls: dict[str, str] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.callbacks: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.fault = "ok"
        self.delay_ms = 0
        self.hanging = 0
        self._release = asyncio.Event()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- addresses --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def secret(self) -> str:
        return self.spec.secret

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL (``.../bigbluebutton/``), with the real port once listening."""
        return self.origin + self.base_path

    def api_url(self, call: str, query: str = "", algorithm: str = "sha1") -> str:
        """A signed API URL for this server; ``query`` is used byte for byte."""
        return f"{self.url}api/{call}?{checksum.sign(call, query, self.secret, algorithm)}"

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,  # a client giving up ends its handler: no leaked hangs
            shutdown_timeout=0.5,
            access_log=None,
            max_line_size=MAX_URL_BYTES,
            max_field_size=MAX_URL_BYTES,
        )
        await self._runner.setup()
        await self._open()

    async def stop(self) -> None:
        self._stopping = True
        self._release_hung()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def _open(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        server = site._server  # the port actually bound when the spec asked for port 0
        sockets = getattr(server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        """Refuse connections: close the listening socket and drop every open connection."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        if server is not None:
            for connection in server.connections:
                connection.force_close()

    # -- faults and state -------------------------------------------------------------------------

    async def set_fault(self, mode: str, delay_ms: int = 0) -> None:
        """Switch fault mode; leaving ``refuse`` re-opens the same port, leaving ``hang`` frees hangs."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {', '.join(FAULT_MODES)}")
        previous = self.fault
        self.fault, self.delay_ms = mode, max(0, int(delay_ms))
        if previous == "hang" and mode != "hang":
            self._release_hung()
        if mode == "refuse" and previous != "refuse":
            await self._close_listener()
        elif mode != "refuse" and previous == "refuse" and self._runner is not None:
            try:
                await self._open()
            except OSError:
                self.fault = "refuse"  # still not listening: say so
                raise

    def _release_hung(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    async def reset(self) -> None:
        """Forget meetings, recordings, sessions, logs and faults."""
        await self.set_fault("ok")
        self.meetings.clear()
        self.recordings.clear()
        self.sessions.clear()
        self.config_xmls.clear()
        self.requests.clear()
        self.callbacks.clear()

    def active_meeting(self, meeting_id: str | None) -> Meeting | None:
        meeting = self.meetings.get(meeting_id or "")
        return meeting if meeting is not None and not meeting.ended else None

    def active_meetings(self) -> list[Meeting]:
        return [m for m in self.meetings.values() if not m.ended]

    def live_recordings(self) -> list[Recording]:
        return [r for r in self.recordings.values() if r.state != "deleted"]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "secret": self.secret,
            "fault": self.fault,
            "delay_ms": self.delay_ms,
            "hanging": self.hanging,
            "config_xml": self.spec.config_xml,
            "checksum_algorithms": list(self.spec.checksum_algorithms),
            "meetings": [m.meeting_id for m in self.active_meetings()],
            "recordings": [r.record_id for r in self.live_recordings()],
        }

    def set_participants(
        self,
        meeting_id: str,
        participants: int,
        voice: int = 0,
        video: int = 0,
        moderators: int = 0,
        listeners: int = 0,
    ) -> Meeting:
        """Replace the attendee list with synthetic users so the counts are exactly these."""
        meeting = self.active_meeting(meeting_id)
        if meeting is None:
            raise KeyError(meeting_id)
        count = max(0, participants)
        meeting.attendees = [
            Attendee(
                user_id=f"w_sim{i:07d}",
                full_name=f"Simulated User {i + 1}",
                role="MODERATOR" if i < moderators else "VIEWER",
                is_presenter=i == 0,
                voice=i < voice,
                video=i < video,
                listening_only=i < listeners,
            )
            for i in range(count)
        ]
        meeting.running = count > 0
        if count:
            meeting.has_user_joined = True
            meeting.start_time = meeting.start_time or _now_ms()
        meeting.max_seen = max(meeting.max_seen, count)
        return meeting

    def add_recording(
        self,
        meeting_id: str,
        record_id: str | None = None,
        *,
        state: str = "published",
        published: bool | None = None,
        meta: dict[str, str] | None = None,
        name: str | None = None,
        internal_meeting_id: str | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        participants: int = 0,
    ) -> Recording:
        """Store a recording as if a meeting's processing had finished."""
        now = _now_ms()
        internal = (
            internal_meeting_id or record_id or f"{hashlib.sha1(meeting_id.encode()).hexdigest()}-{now}"
        )
        record_id = record_id or internal
        metadata = {"isBreakout": "false", "meetingId": meeting_id, "meetingName": name or meeting_id}
        metadata.update({str(k).lower(): str(v) for k, v in (meta or {}).items()})
        recording = Recording(
            record_id=record_id,
            meeting_id=meeting_id,
            internal_meeting_id=internal,
            name=name or meeting_id,
            playback_url=f"{self.origin}/playback/presentation/2.3/{record_id}",
            state=state,
            published=state == "published" if published is None else published,
            start_time=now - 60000 if start_time is None else start_time,
            end_time=now if end_time is None else end_time,
            participants=participants,
            metadata=metadata,
        )
        self.recordings[record_id] = recording
        if self.spec.published_dir:
            write_published(recording, Path(self.spec.published_dir))
        return recording

    async def end_meeting(self, meeting: Meeting) -> None:
        """End as bbb-web does: drop it from the lists, fire callbacks, make the recording."""
        now = _now_ms()
        meeting.ended = True
        meeting.forcibly_ended = True
        meeting.running = False
        meeting.end_time = now
        for token in [t for t, s in self.sessions.items() if s.internal_meeting_id == meeting.internal_id]:
            del self.sessions[token]
        marks = "true" if meeting.record else "false"
        query = f"meetingID={quote(meeting.meeting_id, safe='')}&recordingmarks={marks}"
        for url in (meeting.metadata.get("endcallbackurl"), meeting.meeting_ended_url):
            if url:
                self.cluster.spawn(self._callback("end", "GET", _append_query(url, query)))
        if not meeting.record:
            return
        recording = self.add_recording(
            meeting.meeting_id,
            meeting.internal_id,
            name=meeting.name,
            meta=meeting.metadata,
            start_time=meeting.start_time or meeting.create_time,
            end_time=now,
            participants=max(meeting.max_seen, len(meeting.attendees)),
        )
        recording.is_breakout = meeting.is_breakout
        recording.metadata["isBreakout"] = "true" if meeting.is_breakout else "false"
        if self.spec.published_dir:
            write_published(recording, Path(self.spec.published_dir))
        ready_url = meeting.metadata.get("bbb-recording-ready-url")
        if ready_url:
            self.cluster.spawn(self._recording_ready(recording, ready_url))

    async def _recording_ready(self, recording: Recording, url: str) -> None:
        await asyncio.sleep(self.spec.recording_ready_delay)
        # As bbb-web's recording-ready script does: HS256 with the server's shared secret.
        token = jwt.encode({"meeting_id": recording.meeting_id, "record_id": recording.record_id}, self.secret,
                           algorithm="HS256")
        await self._callback("recording_ready", "POST", url, data={"signed_parameters": token})

    async def _callback(self, kind: str, method: str, url: str, data: dict[str, str] | None = None) -> None:
        """Fire-and-forget HTTP callback; the outcome goes to the callback log, never raises."""
        entry: dict[str, Any] = {"kind": kind, "method": method, "url": url, "data": data, "ts": time.time()}
        self.callbacks.append(entry)
        try:
            async with self.cluster.http.request(method, url, data=data) as response:
                await response.read()
                entry["status"] = response.status
        except Exception as exc:  # a callback target being down must not disturb the server
            entry["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s callback to %s failed: %s", self.name, kind, url, entry["error"])

    # -- HTTP entry -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self.fault
        entry = None
        if fault != "refuse" and (request.path + "/").startswith(self.api_path + "/"):
            entry = self._log(request, self._call_name(request.path), fault)  # logged on arrival
        if fault != "ok":
            early = await self._apply_fault(request, fault)
            if early is not None:
                return early
        try:
            return await self._route(request, entry)
        except Exception:
            log.exception("%s: error handling %s %s", self.name, request.method, request.path)
            return _xml(errors.internal_error().to_xml())

    async def _apply_fault(self, request: web.Request, fault: str) -> web.StreamResponse | None:
        if fault == "refuse":  # a connection kept alive from before the listener closed
            return self._drop(request)
        if fault == "503":
            return web.Response(
                status=503,
                text="<html><head><title>503 Service Temporarily Unavailable</title></head><body>"
                "<center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center>"
                "</body></html>",
                content_type="text/html",
            )
        if fault == "slow":
            await asyncio.sleep(self.delay_ms / 1000)
            return None
        # hang: hold the request until the fault is lifted, the server stops, or the cap passes
        self.hanging += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), HANG_CAP_SECONDS)
        finally:
            self.hanging -= 1
        if self._stopping or self.fault in ("hang", "refuse"):
            return self._drop(request)
        return None

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection without an answer, as a crashed or stuck server would."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    def _call_name(self, path: str) -> str:
        name = path[len(self.api_path) + 1 :] if path.startswith(self.api_path + "/") else ""
        return name[:-4] if name.endswith(".xml") else name  # Grails accepted create.xml etc.

    async def _route(self, request: web.Request, entry: dict[str, Any] | None) -> web.StreamResponse:
        path = request.path
        if path in (self.api_path, self.api_path + "/"):
            return _xml(
                bbbxml.success([("version", "2.0"), ("apiVersion", "2.0"), ("bbbVersion", BBB_VERSION)])
            )
        if path.startswith(self.api_path + "/"):
            assert entry is not None
            return await self._api(request, self._call_name(path), entry)
        if path == "/html5client/join":
            return self._client_page(request)
        if path.startswith("/playback/presentation/2.3/"):
            return self._playback_page(path.rsplit("/", 1)[-1])
        return web.Response(status=404, text="Not Found", content_type="text/plain")

    def _log(self, request: web.Request, call: str, fault: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "call": call,
            "method": request.method,
            "raw_query": request.rel_url.raw_query_string,
            "checksum_ok": None,
            "algorithm": None,
            "content_type": request.headers.get("Content-Type", ""),
            "body_length": request.content_length or 0,
            "ts": time.time(),
            "fault": None if fault == "ok" else fault,
        }
        self.requests.append(entry)
        return entry

    async def _api(self, request: web.Request, call: str, entry: dict[str, Any]) -> web.StreamResponse:
        info = _CALLS.get(call)
        if info is not None and call in _CONFIG_XML_CALLS and not self.spec.config_xml:
            info = None  # removed in 2.4: the call simply does not exist any more
        raw_query = request.rel_url.raw_query_string
        wants_json = info is not None and info.json
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise errors.request_too_large() from None
            entry["body_length"] = len(body)
            if info is None:
                raise errors.unsupported_request()
            if request.method not in info.methods:
                raise ApiError(
                    "unsupportedRequest", f"{call} does not accept {request.method} requests.", 405
                )
            content_type = request.content_type.lower() if body else ""
            form_pairs: list[tuple[str, str]] = []
            if content_type == FORM and body:
                form_pairs = RawQuery.parse(body.decode("utf-8", "replace").strip()).pairs()
            self._verify_checksum(call, raw_query, form_pairs, entry)
            if body and content_type not in info.content_types:
                raise errors.unsupported_content_type()
            params: dict[str, str] = {}
            for key, value in [*RawQuery.parse(raw_query).pairs(), *form_pairs]:
                params.setdefault(key, value)
            return await info.handler(self, _Call(request, call, params, body, content_type))
        except ApiError as error:
            if wants_json:
                return _json_api(
                    {"returncode": "FAILED", "messageKey": error.message_key, "message": error.message},
                    error.status,
                )
            return _xml(error.to_xml(), error.status)

    def _verify_checksum(
        self, call: str, raw_query: str, form_pairs: list[tuple[str, str]], entry: dict[str, Any]
    ) -> None:
        """bbb-web's check: raw URL query, text-replace removal, algorithm by length and allow-list.

        With an empty URL query and a form body, the 2.4-2.6 rebuild of the body parameters
        (sorted keys, Java URL encoding) is accepted too, as setConfigXML clients relied on it.
        """
        if not self.secret:  # securitySalt empty: bbb-web skips the check
            entry["checksum_ok"] = True
            return
        supplied = checksum.checksum_param(raw_query)
        query = checksum.strip_checksum(raw_query, supplied) if supplied else raw_query
        if not raw_query and form_pairs:
            supplied = next((value for key, value in form_pairs if key == "checksum"), None)
            query = checksum.legacy_params_query(form_pairs)
        if not supplied:
            entry["checksum_ok"] = False
            raise errors.checksum_missing()
        supplied = checksum.sanitize(supplied)
        entry["algorithm"] = checksum.algorithm_for(supplied)
        ok = checksum.matching_owner(
            call, query, supplied, [(self.secret, True)], self.spec.checksum_algorithms
        )
        entry["checksum_ok"] = bool(ok)
        if not ok:
            raise errors.checksum_mismatch()

    # -- pages outside the API --------------------------------------------------------------------

    def _client_page(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.query.get("sessionToken", ""))
        if session is None:
            return web.Response(
                status=404, text="<html><body>Session not found</body></html>", content_type="text/html"
            )
        page = (
            "<!DOCTYPE html><html><head><title>BigBlueButton (simulated)</title></head><body>"
            f"<h1>Simulated BigBlueButton client on {html.escape(self.name)}</h1>"
            f'<p>meeting: <span id="meetingID">{html.escape(session.meeting_id)}</span></p>'
            f'<p>user: <span id="fullName">{html.escape(session.full_name)}</span></p>'
            f'<p>role: <span id="role">{session.role}</span></p>'
            f'<p>server: <span id="server">{html.escape(self.name)}</span></p>'
            "</body></html>"
        )
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    def _playback_page(self, record_id: str) -> web.Response:
        recording = self.recordings.get(record_id)
        if recording is None or recording.state == "deleted":
            return web.Response(status=404, text="Not Found", content_type="text/plain")
        page = f"<!DOCTYPE html><html><body><h1>Playback of {html.escape(recording.record_id)}</h1></body></html>"
        return web.Response(text=page, content_type="text/html")

    # -- API calls --------------------------------------------------------------------------------

    async def _create(self, call: _Call) -> web.Response:
        p = call.params
        meeting_id = _required_meeting_id(p)
        if checksum.sanitize(meeting_id) != meeting_id:
            raise errors.invalid_meeting_id()
        name = p.get("name")
        if not name:
            raise ApiError("validationError", "You must provide a meeting name")
        if not 2 <= len(name) <= 256:
            raise ApiError("validationError", "Meeting name must be between 2 and 256 characters")
        attendee_pw, moderator_pw = p.get("attendeePW"), p.get("moderatorPW")
        for password in (attendee_pw, moderator_pw):
            if password and not 2 <= len(password) <= 64:
                raise ApiError("validationError", "Password must be between 2 and 64 characters")
        is_breakout = _is_true(p.get("isBreakout"))
        if is_breakout and not p.get("parentMeetingID"):
            raise ApiError(
                "parentMeetingIdMissing", "No parent meeting ID was provided for the breakout room"
            )

        existing = self.active_meeting(meeting_id)
        if existing is not None:
            same_passwords = existing.attendee_pw == attendee_pw and existing.moderator_pw == moderator_pw
            if same_passwords or (not attendee_pw and not moderator_pw):
                return _xml(bbbxml.success(existing.create_fields("duplicateWarning", DUPLICATE_MESSAGE)))
            raise ApiError("idNotUnique", ID_NOT_UNIQUE_MESSAGE)

        in_use = {m.voice_bridge for m in self.active_meetings()}
        voice_bridge = p.get("voiceBridge") or ""
        if not voice_bridge:
            for _ in range(10):  # as bbb-web: ten tries, then let the clash check decide
                voice_bridge = str(_random.randint(10000, 99999))
                if voice_bridge not in in_use:
                    break
        if voice_bridge in in_use:
            raise ApiError("nonUniqueVoiceBridge", "The selected voice bridge is already in use.")

        documents = 0
        if call.content_type in XML_TYPES and call.body:
            try:
                documents = sum(1 for _ in bbbxml.parse(call.body).iter("document"))
            except bbbxml.XmlError as exc:  # bbb-web logs a bad <modules> body and creates anyway
                log.info("%s: create %s with unreadable XML body: %s", self.name, meeting_id, exc)

        create_time = _now_ms()
        metadata = {
            key[5:].lower(): value for key, value in p.items() if key.startswith("meta_") and len(key) > 5
        }
        meeting = Meeting(
            meeting_id=meeting_id,
            internal_id=f"{hashlib.sha1(meeting_id.encode()).hexdigest()}-{create_time}",
            name=name,
            attendee_pw=attendee_pw or _token(8),
            moderator_pw=moderator_pw or _token(8),
            create_time=create_time,
            voice_bridge=voice_bridge,
            dial_number=p.get("dialNumber") or DEFAULT_DIAL_NUMBER,
            duration=_int_param(p.get("duration"), 0),
            record=_is_true(p.get("record")),
            max_users=_int_param(p.get("maxParticipants"), 0),
            metadata=metadata,
            is_breakout=is_breakout,
            parent_id=(p.get("parentMeetingID") or "bbb-none") if is_breakout else "bbb-none",
            sequence=_int_param(p.get("sequence"), 0),
            free_join=_is_true(p.get("freeJoin")),
            meeting_ended_url=p.get("meetingEndedURL") or "",
            documents=documents,
        )
        if is_breakout:
            for parent in self.active_meetings():
                if parent.internal_id == meeting.parent_id:
                    parent.breakout_rooms.append(meeting.internal_id)
        self.meetings[meeting_id] = meeting
        return _xml(bbbxml.success(meeting.create_fields()))

    async def _join(self, call: _Call) -> web.Response:
        p = call.params
        full_name = checksum.sanitize(p.get("fullName") or "")
        if not full_name:
            raise ApiError(
                "missingParamFullName",
                "You must specify a name for the attendee who will be joining the meeting.",
            )
        meeting_id = _required_meeting_id(p)
        meeting = self.active_meeting(meeting_id)
        if meeting is None:
            if meeting_id in self.meetings:
                raise ApiError("meetingForciblyEnded", FORCIBLY_ENDED_MESSAGE)
            raise errors.not_found()
        if p.get("createTime") is not None and _int_param(p.get("createTime"), -1) != meeting.create_time:
            raise ApiError(
                "mismatchCreateTimeParam",
                "The createTime parameter submitted mismatches with the current meeting.",
            )
        role_param = (p.get("role") or "").lower()
        password = p.get("password") or ""
        if role_param in ("moderator", "viewer"):
            role = role_param.upper()
        elif password:
            if password == meeting.moderator_pw:
                role = "MODERATOR"
            elif password == meeting.attendee_pw:
                role = "VIEWER"
            else:
                raise ApiError("Params required", "You must enter a valid password")
        else:
            raise ApiError(
                "Params required",
                "You must either send the valid role of the user, or the password, sould the meeting has one.",
            )
        if meeting.max_users and len(meeting.attendees) >= meeting.max_users:
            raise ApiError(
                "maxParticipantsReached",
                "The number of participants allowed for this meeting has been reached.",
            )

        user_id = "w_" + _token(12)
        auth_token, session_token = _token(12), _token(16)
        custom = {k[len("userdata-") :]: v for k, v in p.items() if k.startswith("userdata-")}
        meeting.attendees.append(
            Attendee(user_id=p.get("userID") or user_id, full_name=full_name, role=role, custom=custom)
        )
        meeting.running = meeting.has_user_joined = True
        meeting.start_time = meeting.start_time or _now_ms()
        meeting.max_seen = max(meeting.max_seen, len(meeting.attendees))
        self.sessions[session_token] = _Session(
            session_token, meeting.meeting_id, meeting.internal_id, user_id, full_name, role
        )
        destination = f"{self.origin}/html5client/join?sessionToken={session_token}"
        redirect = p.get("redirect")
        if redirect and not _is_true(redirect):
            return _xml(
                bbbxml.success(
                    [
                        ("messageKey", "successfullyJoined"),
                        ("message", "You have joined successfully."),
                        ("meeting_id", meeting.internal_id),
                        ("user_id", user_id),
                        ("auth_token", auth_token),
                        ("session_token", session_token),
                        ("guestStatus", "ALLOW"),
                        ("url", destination),
                    ]
                )
            )
        return web.Response(status=302, headers={"Location": destination, "Cache-Control": "no-cache"})

    async def _end(self, call: _Call) -> web.Response:
        meeting = self.active_meeting(_required_meeting_id(call.params))
        if meeting is None:
            raise errors.not_found()
        await self.end_meeting(meeting)
        return _xml(bbbxml.success([("messageKey", "sentEndMeetingRequest"), ("message", END_MESSAGE)]))

    async def _is_meeting_running(self, call: _Call) -> web.Response:
        meeting = self.active_meeting(_required_meeting_id(call.params))
        return _xml(bbbxml.success([("running", meeting is not None and meeting.running)]))

    async def _get_meeting_info(self, call: _Call) -> web.Response:
        meeting = self.active_meeting(_required_meeting_id(call.params))
        if meeting is None:
            raise errors.not_found()
        return _xml(bbbxml.success(meeting.info_fields()))

    async def _get_meetings(self, call: _Call) -> web.Response:
        meetings = self.active_meetings()
        if not meetings:
            return _xml(
                bbbxml.success(
                    [
                        ("meetings", []),
                        ("messageKey", "noMeetings"),
                        ("message", "no meetings were found on this server"),
                    ]
                )
            )
        return _xml(bbbxml.success([("meetings", [("meeting", m.info_fields()) for m in meetings])]))

    async def _get_sessions(self, call: _Call) -> web.Response:
        return _xml(bbbxml.success([("sessions", [])]))

    async def _get_recordings(self, call: _Call) -> web.Response:
        p = call.params
        record_ids = set(_id_list(p.get("recordID")))
        meeting_ids = set(_id_list(p.get("meetingID")))
        states = {s.lower() for s in _id_list(p.get("state"))} or {"published", "unpublished"}
        meta = {
            key[5:].lower(): value for key, value in p.items() if key.startswith("meta_") and len(key) > 5
        }
        found = []
        for recording in self.recordings.values():
            if record_ids:  # bbb-web: a recordID filter makes meetingID irrelevant
                if recording.record_id not in record_ids:
                    continue
            elif meeting_ids and recording.meeting_id not in meeting_ids:
                continue
            if "any" not in states and recording.state not in states:
                continue
            if recording.state == "deleted" and "deleted" not in states:
                continue
            lowered = {k.lower(): v for k, v in recording.metadata.items()}
            if any(lowered.get(key) != value for key, value in meta.items()):
                continue
            found.append(recording)
        total = len(found)
        paginated = p.get("offset") is not None or p.get("limit") is not None
        if paginated:
            offset = max(0, _int_param(p.get("offset"), 0))
            limit = min(100, max(1, _int_param(p.get("limit"), 100)))
            found = found[offset : offset + limit]
        if not found:
            return _xml(
                bbbxml.success(
                    [
                        ("recordings", []),
                        ("messageKey", "noRecordings"),
                        ("message", "There are no recordings for the meeting(s)."),
                    ]
                )
            )
        fields: list[tuple[str, Any]] = [("recordings", [("recording", r.fields()) for r in found])]
        if paginated:
            fields.append(("totalElements", total))
        return _xml(bbbxml.success(fields))

    def _recordings_for(self, params: dict[str, str], purpose: str) -> list[Recording]:
        ids = _id_list(params.get("recordID"))
        if not ids:
            raise ApiError("missingParamRecordID", f"You must specify one or more a recordIDs for {purpose}.")
        found = [self.recordings.get(record_id) for record_id in ids]
        live = [r for r in found if r is not None and r.state != "deleted"]
        if len(live) != len(ids):
            raise errors.recording_not_found()
        return live

    async def _publish_recordings(self, call: _Call) -> web.Response:
        publish = call.params.get("publish")
        if not publish:
            raise ApiError("missingParamPublish", "You must specify a publish value true or false.")
        recordings = self._recordings_for(call.params, "publishing")
        flag = _is_true(publish)
        for recording in recordings:
            recording.published = flag
            recording.state = "published" if flag else "unpublished"
        return _xml(bbbxml.success([("published", flag)]))

    async def _delete_recordings(self, call: _Call) -> web.Response:
        for recording in self._recordings_for(call.params, "deleting"):
            recording.state, recording.published = "deleted", False
        return _xml(bbbxml.success([("deleted", True)]))

    async def _update_recordings(self, call: _Call) -> web.Response:
        recordings = self._recordings_for(call.params, "updating")
        changes = {k[5:].lower(): v for k, v in call.params.items() if k.startswith("meta_") and len(k) > 5}
        for recording in recordings:
            for key, value in changes.items():
                if value:
                    recording.metadata[key] = value
                else:
                    recording.metadata.pop(key, None)
        return _xml(bbbxml.success([("updated", True)]))

    async def _get_recording_text_tracks(self, call: _Call) -> web.Response:
        record_id = call.params.get("recordID")
        if not record_id:
            raise ApiError("missingParameter", "You must specify a recordID.")
        recording = self.recordings.get(record_id)
        if recording is None or recording.state == "deleted":
            raise ApiError("noRecordings", f"No recording found for {record_id}")
        return _json_api({"returncode": "SUCCESS", "tracks": recording.text_tracks})

    async def _put_recording_text_track(self, call: _Call) -> web.Response:
        fields, files = _parse_multipart(call.request.headers.get("Content-Type", ""), call.body)
        params = {**fields, **call.params}  # the URL query (checksummed) wins over body fields
        record_id = params.get("recordID")
        if not record_id:
            raise ApiError("paramError", "Missing param recordID.")
        recording = self.recordings.get(record_id)
        if recording is None or recording.state == "deleted":
            raise ApiError("noRecordings", f"No recording was found for {record_id}.")
        kind = params.get("kind") or ""
        if kind not in ("subtitles", "captions"):
            raise ApiError(
                "invalidKind", f"Invalid kind parameter, expected='subtitles|captions' actual={kind}"
            )
        lang = params.get("lang") or ""
        if not re.match(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", lang):
            raise ApiError("invalidLang", f"Malformed lang param, received={lang}")
        if not files.get("file"):
            raise ApiError("empty_uploaded_text_track", "Empty uploaded text track.")
        track = {
            "href": f"{self.origin}/presentation/{record_id}/caption_{lang}.vtt",
            "kind": kind,
            "label": params.get("label") or lang,
            "lang": lang,
            "source": "upload",
        }
        recording.text_tracks = [t for t in recording.text_tracks if t["lang"] != lang] + [track]
        return _json_api(
            {
                "messageKey": "upload_text_track_success",
                "message": "Text track uploaded successfully",
                "recordId": record_id,
                "returncode": "SUCCESS",
            }
        )

    async def _insert_document(self, call: _Call) -> web.Response:
        meeting_id = _required_meeting_id(call.params)
        meeting = self.active_meeting(meeting_id)
        if meeting is None:
            raise ApiError("notFound", f"Meeting with id [{meeting_id}] not found.")
        try:
            documents = sum(1 for _ in bbbxml.parse(call.body).iter("document"))
        except bbbxml.XmlError:
            raise ApiError("invalidRequestBody", "Invalid request body") from None
        meeting.documents += documents
        return _xml(bbbxml.success([("messageKey", ""), ("message", "Presentation is being uploaded")]))

    async def _send_chat_message(self, call: _Call) -> web.Response:
        meeting_id = _required_meeting_id(call.params)
        message = call.params.get("message")
        if not message:
            raise errors.missing_param("message")
        meeting = self.active_meeting(meeting_id)
        if meeting is None:
            raise errors.not_found()
        meeting.chat.append({"userName": call.params.get("userName") or "System", "message": message})
        return _xml(bbbxml.success([("messageKey", ""), ("message", "")]))

    async def _get_default_config_xml(self, call: _Call) -> web.Response:
        return web.Response(body=self.default_config_xml().encode(), headers=bbbxml.XML_HEADERS)

    def default_config_xml(self) -> str:
        """A small Flash-era (0.9) config.xml whose every URL points at this server."""
        origin = self.origin
        host = origin.split("://", 1)[1]
        return (
            '<?xml version="1.0" ?>\n<config>\n'
            '    <localeversion suppressWarning="false">0.9.0</localeversion>\n'
            "    <version>4357-2014-02-06</version>\n"
            f'    <help url="{origin}/help.html"/>\n'
            f'    <javaTest url="{origin}/testjava.html"/>\n'
            f'    <porttest host="{host}" application="video/portTest" timeout="10000"/>\n'
            f'    <bwMon server="{host}" application="video/bwTest"/>\n'
            f'    <application uri="rtmp://{host}/bigbluebutton" host="{origin}/bigbluebutton/api/enter"/>\n'
            '    <language userSelectionEnabled="true"/>\n'
            f'    <skinning enabled="true" url="{origin}/client/branding/css/BBBDefault.css.swf"/>\n'
            '    <shortcutKeys showButton="true"/>\n'
            '    <browserVersions chrome="32" firefox="26" flash="12" java="1.7.0_51"/>\n'
            '    <layout showLogButton="false" defaultLayout="bbb.layout.name.defaultlayout" '
            'showToolbar="true" showFooter="true" showMeetingName="true" showHelpButton="true" '
            'showLogoutWindow="true" showLayoutTools="true" confirmLogout="true" '
            'showRecordingNotification="true"/>\n'
            '    <meeting muteOnStart="false"/>\n'
            f'    <logging enabled="true" target="trace" level="info" uri="{origin}/log" logPattern=".*"/>\n'
            "    <modules>\n"
            f'        <module name="ChatModule" url="{origin}/client/ChatModule.swf?v=4357" '
            f'uri="rtmp://{host}/bigbluebutton" dependsOn="UsersModule" privateEnabled="true"/>\n'
            f'        <module name="UsersModule" url="{origin}/client/UsersModule.swf?v=4357" '
            f'uri="rtmp://{host}/bigbluebutton" allowKickUser="true"/>\n'
            f'        <module name="DeskShareModule" url="{origin}/client/DeskShareModule.swf?v=4357" '
            f'uri="rtmp://{host}/deskShare" publishURI="{host}"/>\n'
            f'        <module name="PhoneModule" url="{origin}/client/PhoneModule.swf?v=4357" '
            f'uri="rtmp://{host}/sip" autoJoin="true" dependsOn="UsersModule"/>\n'
            f'        <module name="VideoconfModule" url="{origin}/client/VideoconfModule.swf?v=4357" '
            f'uri="rtmp://{host}/video" dependsOn="UsersModule"/>\n'
            f'        <module name="PresentModule" url="{origin}/client/PresentModule.swf?v=4357" '
            f'uri="rtmp://{host}/bigbluebutton" host="{origin}" showPresentWindow="true" '
            'dependsOn="UsersModule"/>\n'
            f'        <module name="WhiteboardModule" url="{origin}/client/WhiteboardModule.swf?v=4357" '
            f'uri="rtmp://{host}/bigbluebutton" dependsOn="PresentModule"/>\n'
            "    </modules>\n</config>\n"
        )

    async def _set_config_xml(self, call: _Call) -> web.Response:
        meeting_id = _required_meeting_id(call.params)
        config_xml = call.params.get("configXML")
        if not config_xml:
            raise ApiError("configXMLError", "You did not pass a config XML")
        meeting = self.active_meeting(meeting_id)
        if meeting is None:
            raise errors.not_found()
        try:
            bbbxml.parse(config_xml.encode("utf-8"))
        except bbbxml.XmlError:
            raise ApiError("configXMLError", "The config XML could not be parsed") from None
        token = _token(8)
        meeting.config_tokens[token] = config_xml
        self.config_xmls[meeting_id] = config_xml
        return _xml(bbbxml.success([("token", token)]))


def _required_meeting_id(params: dict[str, str]) -> str:
    """meetingID with bbb-web's constraints: present, 2-256 characters, no commas."""
    meeting_id = params.get("meetingID")
    if not meeting_id:
        raise errors.missing_meeting_id()
    if not 2 <= len(meeting_id) <= 256:
        raise ApiError("validationError", "Meeting ID must be between 2 and 256 characters")
    if "," in meeting_id:
        raise ApiError("validationError", "Meeting ID cannot contain ','")
    return meeting_id


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """Form fields and file contents of a multipart/form-data body (unreadable parts are skipped)."""
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    if not body or not content_type.lower().startswith(MULTIPART):
        return fields, files
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        parts = message.iter_parts() if message.is_multipart() else []
        for part in parts:
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True) or b""
            if part.get_filename() is not None:
                files[name] = payload
            else:
                fields.setdefault(name, payload.decode("utf-8", "replace"))
    except (ValueError, TypeError, UnicodeError) as exc:
        log.info("unreadable multipart body: %s", exc)
    return fields, files


def _call(
    handler: Callable[[SimServer, _Call], Awaitable[web.StreamResponse]],
    methods: Iterable[str] = ("GET", "POST"),
    content_types: Iterable[str] = (FORM, MULTIPART),
    *,
    json_answer: bool = False,
) -> _CallInfo:
    return _CallInfo(handler, frozenset(methods), frozenset(content_types), json_answer)


# Routes and methods as bbb-web's UrlMappings (3.0-era), plus the Flash-era config.xml pair.
_CALLS: dict[str, _CallInfo] = {
    "create": _call(SimServer._create, content_types=(FORM, MULTIPART, *XML_TYPES)),
    "join": _call(SimServer._join, ("GET",)),
    "isMeetingRunning": _call(SimServer._is_meeting_running),
    "end": _call(SimServer._end),
    "getMeetingInfo": _call(SimServer._get_meeting_info),
    "getMeetings": _call(SimServer._get_meetings),
    "getSessions": _call(SimServer._get_sessions),
    "insertDocument": _call(SimServer._insert_document, ("POST",), XML_TYPES),
    "sendChatMessage": _call(SimServer._send_chat_message, ("GET",)),
    "getRecordings": _call(SimServer._get_recordings),
    "updateRecordings": _call(SimServer._update_recordings),
    "publishRecordings": _call(SimServer._publish_recordings, ("GET",)),
    "deleteRecordings": _call(SimServer._delete_recordings, ("GET",)),
    "getRecordingTextTracks": _call(SimServer._get_recording_text_tracks, json_answer=True),
    "putRecordingTextTrack": _call(
        SimServer._put_recording_text_track, ("POST",), (MULTIPART,), json_answer=True
    ),
    "getDefaultConfigXML": _call(SimServer._get_default_config_xml),
    "setConfigXML": _call(SimServer._set_config_xml),
}
_CONFIG_XML_CALLS = frozenset({"getDefaultConfigXML", "setConfigXML"})


# --------------------------------------------------------------------------------------------------
# The cluster and its control API


class SimCluster:
    """Every simulated server of one process, their shared HTTP client and the control API."""

    def __init__(self) -> None:
        self.servers: dict[str, SimServer] = {}
        self.control_url: str | None = None
        self._http: ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control: web.AppRunner | None = None

    def __getitem__(self, name: str) -> SimServer:
        return self.servers[name]

    def __iter__(self) -> Iterator[SimServer]:
        return iter(self.servers.values())

    def __len__(self) -> int:
        return len(self.servers)

    async def __aenter__(self) -> SimCluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def http(self) -> ClientSession:
        """The client for callbacks, made on first use inside the running loop."""
        if self._http is None or self._http.closed:
            self._http = ClientSession(timeout=ClientTimeout(total=CALLBACK_TIMEOUT_SECONDS))
        return self._http

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a fire-and-forget job that ``stop()`` can still cancel."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def reset(self) -> None:
        for server in self.servers.values():
            await server.reset()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        await asyncio.gather(*(server.stop() for server in self.servers.values()), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- control API ------------------------------------------------------------------------------

    async def start_control(self, port: int, host: str = "127.0.0.1") -> str:
        app = web.Application()
        routes = [
            web.get("/servers", self._c_servers),
            web.get("/servers/{name}", self._c_server),
            web.post("/servers/{name}/fault", self._c_fault),
            web.post("/servers/{name}/meetings/{meeting_id}/participants", self._c_participants),
            web.post("/servers/{name}/meetings/{meeting_id}/end", self._c_end),
            web.get("/servers/{name}/meetings/{meeting_id}", self._c_meeting),
            web.post("/servers/{name}/recordings", self._c_recording),
            web.get("/servers/{name}/requests", self._c_requests),
            web.delete("/servers/{name}/requests", self._c_clear_requests),
            web.get("/servers/{name}/callbacks", self._c_callbacks),
            web.get("/servers/{name}/config_xml/{meeting_id}", self._c_config_xml),
            web.post("/reset", self._c_reset),
        ]
        app.add_routes(routes)
        self._control = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._control.setup()
        site = web.TCPSite(self._control, host, port, reuse_address=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.control_url = f"http://{host}:{bound}"
        return self.control_url

    def _server_or_404(self, request: web.Request) -> SimServer:
        server = self.servers.get(request.match_info["name"])
        if server is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no server {request.match_info['name']!r}"}),
                content_type="application/json",
            )
        return server

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json() if request.can_read_body else {}
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(
                text='{"error": "body is not JSON"}', content_type="application/json"
            ) from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(
                text='{"error": "body must be an object"}', content_type="application/json"
            )
        return data

    @staticmethod
    def _bad(message: str) -> web.Response:
        return web.json_response({"error": message}, status=400)

    async def _c_servers(self, request: web.Request) -> web.Response:
        return web.json_response([server.summary() for server in self.servers.values()])

    async def _c_server(self, request: web.Request) -> web.Response:
        return web.json_response(self._server_or_404(request).summary())

    async def _c_fault(self, request: web.Request) -> web.Response:
        server = self._server_or_404(request)
        data = await self._json_body(request)
        try:
            await server.set_fault(str(data.get("mode", "ok")), int(data.get("delay_ms") or 0))
        except (ValueError, TypeError) as exc:
            return self._bad(str(exc))
        except OSError as exc:  # the port was taken while refused
            return web.json_response({"error": f"could not re-open port: {exc}"}, status=409)
        return web.json_response(server.summary())

    async def _c_participants(self, request: web.Request) -> web.Response:
        server = self._server_or_404(request)
        data = await self._json_body(request)
        try:
            counts = {
                key: int(data.get(key) or 0)
                for key in ("participants", "voice", "video", "moderators", "listeners")
            }
        except (ValueError, TypeError):
            return self._bad("counts must be integers")
        if any(value < 0 for value in counts.values()):
            return self._bad("counts must not be negative")
        try:
            meeting = server.set_participants(request.match_info["meeting_id"], **counts)
        except KeyError:
            return web.json_response({"error": "no such running meeting"}, status=404)
        return web.json_response({"meetingID": meeting.meeting_id, "participants": len(meeting.attendees)})

    async def _c_end(self, request: web.Request) -> web.Response:
        server = self._server_or_404(request)
        meeting = server.active_meeting(request.match_info["meeting_id"])
        if meeting is None:
            return web.json_response({"error": "no such running meeting"}, status=404)
        await server.end_meeting(meeting)
        return web.json_response({"ended": True, "meetingID": meeting.meeting_id})

    async def _c_meeting(self, request: web.Request) -> web.Response:
        server = self._server_or_404(request)
        meeting = server.meetings.get(request.match_info["meeting_id"])
        if meeting is None:
            return web.json_response({"error": "no such meeting"}, status=404)
        return web.json_response(
            {
                "meetingID": meeting.meeting_id,
                "internalMeetingID": meeting.internal_id,
                "ended": meeting.ended,
                "running": meeting.running,
                "documents": meeting.documents,
                "metadata": meeting.metadata,
                "chat": meeting.chat,
                "attendees": [a.full_name for a in meeting.attendees],
            }
        )

    async def _c_recording(self, request: web.Request) -> web.Response:
        server = self._server_or_404(request)
        data = await self._json_body(request)
        meeting_id = data.get("meetingID")
        if not isinstance(meeting_id, str) or not meeting_id:
            return self._bad("meetingID is required")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            return self._bad("meta must be an object")
        state = str(data.get("state") or "published")
        published = data.get("published")
        recording = server.add_recording(
            meeting_id,
            str(data["recordID"]) if data.get("recordID") else None,
            state=state,
            published=None if published is None else bool(published),
            meta={str(k): str(v) for k, v in meta.items()},
            name=str(data["name"]) if data.get("name") else None,
        )
        return web.json_response({"recordID": recording.record_id, "state": recording.state})

    async def _c_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self._server_or_404(request).requests))

    async def _c_clear_requests(self, request: web.Request) -> web.Response:
        self._server_or_404(request).requests.clear()
        return web.json_response({"cleared": True})

    async def _c_callbacks(self, request: web.Request) -> web.Response:
        return web.json_response(list(self._server_or_404(request).callbacks))

    async def _c_config_xml(self, request: web.Request) -> web.Response:
        stored = self._server_or_404(request).config_xmls.get(request.match_info["meeting_id"])
        if stored is None:
            return web.json_response({"error": "no config.xml stored for that meeting"}, status=404)
        return web.Response(text=stored, content_type="text/xml", charset="utf-8")

    async def _c_reset(self, request: web.Request) -> web.Response:
        await self.reset()
        return web.json_response({"reset": True})


class _QuietBadRequests(logging.Filter):
    """Log malformed HTTP from clients as one line instead of aiohttp's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            detail = str(getattr(record.exc_info[1], "message", "") or record.exc_info[1]).strip()
            log.info("bad HTTP request refused: %s", detail.splitlines()[0] if detail else "?")
            return False
        return True


def _raise_fd_limit(needed: int) -> None:
    """Many servers need many sockets; raise the soft descriptor limit toward the hard one."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def start_cluster(
    specs: Sequence[ServerSpec],
    control_port: int | None = None,
    *,
    control_host: str = "127.0.0.1",
) -> SimCluster:
    """Start every server (port 0 in a spec's URL: a free port) and, unless None, the control API.

    ``control_port=0`` binds a free port; ``cluster.control_url`` tells which.
    """
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError("server names must be unique")
    aiohttp_server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietBadRequests) for f in aiohttp_server_log.filters):
        aiohttp_server_log.addFilter(_QuietBadRequests())
    _raise_fd_limit(len(specs) * 4 + 1024)
    cluster = SimCluster()
    for spec in specs:
        cluster.servers[spec.name] = SimServer(spec, cluster)
    try:
        results = await asyncio.gather(*(s.start() for s in cluster.servers.values()), return_exceptions=True)
        failures = [
            (s, r)
            for s, r in zip(cluster.servers.values(), results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failures:
            server, error = failures[0]
            raise OSError(f"server {server.name} could not listen on {server.url}: {error}") from error
        if control_port is not None:
            await cluster.start_control(control_port, control_host)
    except BaseException:
        await cluster.stop()
        raise
    return cluster


# --------------------------------------------------------------------------------------------------
# Command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulated BigBlueButton servers for bbb-lb tests.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--servers", type=int, help="run bbb1..bbbN on consecutive ports")
    source.add_argument("--spec", type=Path, help="JSON list of {name, url, secret, ...}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=9001)
    parser.add_argument("--secret-prefix", default="secret-")
    parser.add_argument("--control-port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--recording-delay", type=float, default=0.2, help="seconds before recording-ready")
    parser.add_argument("--published-dir", help="publish recordings as BBB does, under DIR/<server name>/")
    parser.add_argument(
        "--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser.parse_args(argv)


def _specs_from_args(args: argparse.Namespace) -> list[ServerSpec]:
    if args.spec is not None:
        data = json.loads(args.spec.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError("the spec file must hold a JSON list")
        return [ServerSpec.from_dict(item, recording_ready_delay=args.recording_delay) for item in data]
    if args.servers < 1:
        raise ValueError("--servers must be at least 1")
    return specs_for(
        args.servers,
        host=args.host,
        base_port=args.base_port,
        secret_prefix=args.secret_prefix,
        recording_ready_delay=args.recording_delay,
        published_dir=args.published_dir,
    )


async def _run(args: argparse.Namespace) -> int:
    specs = _specs_from_args(args)
    cluster = await start_cluster(specs, args.control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for server in cluster:
            log.info("%s listening on %s (secret %s)", server.name, server.url, server.secret)
        print(f"bbbsim ready {cluster.control_url}", flush=True)
        await stop.wait()
    finally:
        await cluster.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(_run(args))
    except (OSError, ValueError) as exc:
        print(f"bbbsim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
