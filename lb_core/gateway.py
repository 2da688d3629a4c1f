"""The load balancer's API: one entry point that turns a request into an answer.

The mitmproxy addon hands every request to ``Gateway.handle``; nothing here knows of mitmproxy.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from lxml import etree

from lb_core import __version__, bbbxml, checksum, configxml, errors
from lb_core.api import (
    ALLOWED_CONTENT_TYPES,
    API_PREFIX,
    CALLBACK_PREFIX,
    DEFAULT_CONTENT_TYPES,
    FORM,
    JSON_CALLS,
    KNOWN_CALLS,
    Answer,
    Call,
    Request,
    allowed_methods,
)
from lb_core.backend import BackendClient, BackendError, BackendReply
from lb_core.balancer import Placement, place
from lb_core.callbacks import Callbacks, PendingCallback
from lb_core.config import Config, IntegrationConfig
from lb_core.errors import ApiError
from lb_core.events import EventLog, EventQueryError, parse_query
from lb_core.meetings import MeetingRecord, MeetingRegistry, meeting_key
from lb_core.pool import Pool, Server
from lb_core.query import RawQuery, encode_value
from lb_core.store import StoreError

log = logging.getLogger("bbb_lb.gateway")

RESERVED_META = {
    "mconflb-guid", "mconflb-institution", "mconflb-institution-name",
    "mconflb-rec-server", "mconflb-rec-server-url", "mconflb-rec-server-key",
}
# Every ``meta_mconflb-*`` (any case) is the LB's: an integration setting one could claim another's meeting.
RESERVED_META_PREFIX = "mconflb-"
LB_ONLY_PARAMS = ("preferredServer",)
# Parameters that decide where a call goes or what it may do: two different values are refused, since
# the LB and the backend could each read a different one.
SINGLE_VALUED_PARAMS = ("meetingID", "recordID", "role", "record")
# bbb-web resolves a meetingID of this shape (sha1 hex, a dash, the creation time in ms) to the meeting with
# that internal ID, whoever created it: such IDs are never created through the LB, nor routed.
INTERNAL_MEETING_ID = re.compile(r"\s*[0-9a-fA-F]{40}-[0-9]+\s*")
MAX_CREATE_ATTEMPTS = 3
_VOICE_BRIDGE_ATTEMPTS = 200
# Caches are bounded so memory does not grow with history; a miss costs one backend look-up.
RECORDINGS_CACHE_MAX = 50_000
RUNNING_CACHE_MAX = 20_000


def now_ms() -> int:
    return int(time.time() * 1000)


def is_success(root: etree._Element) -> bool:
    return bbbxml.returncode(root) == "SUCCESS"


def is_internal_meeting_id(meeting_id: str) -> bool:
    return INTERNAL_MEETING_ID.fullmatch(meeting_id) is not None


def has_reserved_meta(call: Call) -> bool:
    return any(key.startswith(RESERVED_META_PREFIX) for key in call.meta())


def conflicting_param(pairs: list[tuple[str, str]]) -> str | None:
    """The first routing parameter given twice with different values, if any."""
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in SINGLE_VALUED_PARAMS and seen.setdefault(key, value) != value:
            return key
    return None


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A mapping that drops its least recently used entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        try:
            self._items.move_to_end(key)
        except KeyError:
            return default
        return self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._items.pop(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class Gateway:
    """Holds the pool, the meeting map and the event log, and answers every API call."""

    def __init__(self, config: Config, pool: Pool, meetings: MeetingRegistry, events: EventLog,
                 backend: BackendClient, instance_id: str,
                 locate: Callable[[str], tuple[float, float] | None] | None = None) -> None:
        self.config = config
        self.pool = pool
        self.meetings = meetings
        self.events = events
        self.backend = backend
        self.instance_id = instance_id
        self.locate = locate
        self.integrations: dict[str, IntegrationConfig] = {i.name: i for i in config.integrations}
        self._trusted_proxies = [ipaddress.ip_network(p, strict=False) for p in config.geo.trusted_proxies]
        # recordID -> (server name, owning integration), learned from creates and recording listings.
        self.recordings: LruCache[str, tuple[str, str]] = LruCache(RECORDINGS_CACHE_MAX)
        self._secrets: list[tuple[str, IntegrationConfig]] = []
        self.set_integrations(list(config.integrations))
        self._handlers: dict[str, Callable[[Call, Answer], Awaitable[Answer]]] = {
            "create": self.create,
            "join": self.join,
            "end": self.end,
            "isMeetingRunning": self.is_meeting_running,
            "getMeetingInfo": self.get_meeting_info,
            "insertDocument": self.routed_by_meeting,
            "sendChatMessage": self.routed_by_meeting,
            "getMeetings": self.get_meetings,
            "getRecordings": self.get_recordings,
            "publishRecordings": self.recordings_action,
            "deleteRecordings": self.recordings_action,
            "updateRecordings": self.recordings_action,
            "getRecordingTextTracks": self.routed_by_recording,
            "putRecordingTextTrack": self.routed_by_recording,
            "getServers": self.get_servers,
            "getMeetingEvents": self.get_meeting_events,
            "getDefaultConfigXML": self.get_default_config_xml,
            "setConfigXML": self.set_config_xml,
        }
        self.callbacks: Callbacks | None = None
        # isMeetingRunning answers per meeting key, briefly: integrations poll it while users wait.
        self._running_cache: LruCache[str, tuple[float, bytes]] = LruCache(RUNNING_CACHE_MAX)
        # getMeetings listings per server (from polls or live calls), reused while young enough.
        self._listings: dict[str, tuple[float, Listing]] = {}
        self._refreshing: dict[str, asyncio.Future[None]] = {}
        self._fresh: dict[str, Listing] = {}  # the latest answer per server, cached or not
        self._changed_at: dict[str, float] = {}

    def set_integrations(self, integrations: list[IntegrationConfig]) -> None:
        self.integrations = {i.name: i for i in integrations}
        self._secrets = [(secret, i) for i in integrations for secret in i.secrets]

    # --- entry point ---------------------------------------------------------------------------

    async def handle(self, request: Request) -> Answer:
        try:
            return await self._handle(request)
        except ApiError as error:
            return Answer.error(error)
        except StoreError as exc:  # Redis down or slow: one line in the log, one FAILED answer, no traceback
            log.warning("%s %s: %s", errors.store_unavailable().message_key, request.path, exc)
            return Answer.error(errors.store_unavailable())
        except Exception:  # the last line of defence: never a traceback to the client
            log.exception("unexpected error handling %s", request.path)
            return Answer.error(errors.internal_error())

    async def _handle(self, request: Request) -> Answer:
        path = request.path
        if path.startswith(CALLBACK_PREFIX) and self.callbacks is not None:
            return await self.callbacks.handle(request)
        if path in (API_PREFIX, API_PREFIX + "/"):
            return self.version()
        if not path.startswith(API_PREFIX + "/"):
            return Answer.error(ApiError("notFound", "There is no BigBlueButton API at this address.", 404))
        name = path[len(API_PREFIX) + 1:]
        if name.endswith(".xml"):
            name = name[:-4]
        if name not in KNOWN_CALLS:
            return Answer.error(errors.unsupported_request(), call=name[:64])
        methods = allowed_methods(name)
        if request.method not in methods:
            # bbb-web has no route for this method: nothing is done, whatever the checksum.
            answer = Answer.error(ApiError("unsupportedRequest", "This HTTP method is not supported.", 405),
                                  call=name)
            answer.headers["Allow"] = ", ".join(sorted(methods))
            return answer
        info = Answer(200, b"", {}, call=name)
        try:
            if len(request.body) > self.config.max_body_bytes:
                raise errors.request_too_large()
            try:
                call = self.verify(name, request)
            except ApiError as error:
                info.checksum = "missing" if error.message == errors.checksum_missing().message else (
                    "mismatch" if error.message_key == "checksumError" else "n/a")
                raise
            info.integration = call.integration.name
            info.checksum = "ok"
            info.meeting_id = call.param("meetingID")
            if not call.integration.enabled:
                raise errors.permission_denied_access()
            if (twice := conflicting_param(call.pairs)) is not None:
                raise errors.invalid_parameter(f"{twice} is given more than once with different values")
            answer = await self._handlers[name](call, info)
        except ApiError as error:
            answer = Answer.error(error)
        if answer is not info:
            for attr in ("call", "integration", "meeting_id", "checksum", "route", "server", "decision", "backend"):
                if not getattr(answer, attr) or getattr(answer, attr) == "n/a":
                    setattr(answer, attr, getattr(info, attr))
        return answer

    def verify(self, name: str, request: Request) -> Call:
        """Check the checksum as bbb-web does and find the integration that signed the call.

        Everything here runs for anonymous callers, so it is bounded before it is done: sizes and
        parameter counts are checked first, the checksum is verified over the raw bytes as sent, and
        the body is decoded only once a secret has matched.
        """
        limits = self.config.limits
        content_type = request.content_type
        body: bytes | None = request.body or None
        raw_query = request.raw_query
        if len(raw_query) > limits.max_query_bytes:
            raise errors.request_too_large()
        if body is not None:
            if len(body) > limits.body_limit(name):
                raise errors.request_too_large()
            allowed = ALLOWED_CONTENT_TYPES.get(name, DEFAULT_CONTENT_TYPES)
            if name == "setConfigXML":
                allowed = {FORM}
            if content_type not in allowed:
                raise errors.unsupported_content_type()
        form = body if body is not None and content_type == FORM else b""
        if raw_query.count("&") + form.count(b"&") + 2 > limits.max_params:
            raise errors.invalid_parameter(f"more than {limits.max_params} parameters")
        supplied = checksum.checksum_param(raw_query)
        if supplied is None and form:
            supplied = checksum.checksum_param(form)
        if not supplied:
            raise errors.checksum_missing()
        signed = checksum.strip_checksum(raw_query, supplied)
        owner = None
        legacy = ""
        body_signed = not signed and bool(form)
        if not body_signed:
            owner = checksum.matching_owner(name, signed, supplied, self._secrets, self.config.checksum_algorithms)
        else:
            # Older servers verified form POSTs over the body: as sent, or re-encoded sorted.
            stripped_body = checksum.strip_checksum(form, supplied)
            owner = checksum.matching_owner(name, stripped_body, supplied, self._secrets,
                                            self.config.checksum_algorithms)
            if owner is None and checksum.algorithm_for(supplied) is not None:
                # Re-encoding needs the decoded pairs: bounded by the body limit and the parameter count.
                legacy = checksum.legacy_params_query(
                    RawQuery.parse(stripped_body.decode("utf-8", "replace")).pairs())
                owner = checksum.matching_owner(name, legacy, supplied, self._secrets,
                                                self.config.checksum_algorithms)
                if owner is None:
                    legacy = ""
        if owner is None:
            raise errors.checksum_mismatch()
        form_text = ""
        if form:
            try:
                form_text = form.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError("invalidParameters", "The request body is not valid UTF-8.") from None
        forward_body = body
        if body_signed:
            query_text = legacy or checksum.strip_checksum(form_text, supplied)
            forward_body = None  # the body itself was signed: it travels as the query
            query = RawQuery.parse(query_text)
            pairs = query.pairs()
        else:
            query = RawQuery.parse(signed)
            pairs = query.pairs()
            if form_text:
                pairs += [p for p in RawQuery.parse(form_text).pairs() if p[0] != "checksum"]
        forwarded_for = request.headers.get("x-forwarded-for", "")
        return Call(name, request.method, query, pairs, forward_body, content_type, owner, request.client_ip,
                    forwarded_for, request.headers.get("content-type", ""))

    # --- helpers ---------------------------------------------------------------------------------

    def version(self) -> Answer:
        body = bbbxml.success([
            ("version", "2.0"), ("apiVersion", "2.0"), ("bbbVersion", ""),
            ("custom", [("name", "bbb-lb"), ("version", __version__), ("deploy", 1),
                        ("revision", _revision())]),
        ])
        return Answer.xml(body, call="version", result="SUCCESS")

    def record_for(self, call: Call) -> MeetingRecord | None:
        """The meeting the calling integration created under this ID: the only way a call reaches a backend.

        An internal-ID-shaped meetingID is never routed, even if an older version recorded one: bbb-web
        would resolve it to whichever meeting has that internal ID.
        """
        meeting_id = call.param("meetingID")
        if not meeting_id:
            raise errors.missing_meeting_id()
        if is_internal_meeting_id(meeting_id):
            return None
        return self.meetings.get(call.integration.name, meeting_id)

    def known_record(self, call: Call) -> MeetingRecord:
        """The call's meeting, or BBB's notFound answer."""
        record = self.record_for(call)
        if record is None:
            raise errors.not_found()
        return record

    async def forward(self, server: Server, call: Call, info: Answer, query: RawQuery | None = None,
                      *, body: bytes | None = None, content_type: str | None = None,
                      timeout_s: float | None = None) -> BackendReply:
        """Send the call to ``server`` re-signed with its secret; record it on the answer."""
        query = query if query is not None else call.query
        forward_body = body if body is not None else call.body
        method = "POST" if forward_body else "GET"
        try:
            reply = await self.backend.call(
                server.config, call.name, query.text, method=method, body=forward_body,
                content_type=content_type or (call.content_type_header if forward_body else None),
                timeout_s=timeout_s,
            )
        except BackendError as exc:
            info.backend.append({"server": server.name, "call": call.name, "error": str(exc)})
            raise
        info.backend.append({"server": server.name, "call": call.name, "status": reply.status,
                             "ms": round(reply.elapsed_ms, 2), "url": reply.url_without_checksum})
        info.server = server.name
        return reply

    def relay(self, reply: BackendReply, info: Answer, call: Call) -> tuple[Answer, etree._Element | None]:
        """Pass a backend answer back, as long as it is an API answer and not an error page."""
        info.route = info.route if info.route != "local" else "routed"
        content_type = reply.headers.get("Content-Type", "")
        if call.name in JSON_CALLS and "json" in content_type and reply.status < 500:
            info.status, info.body = reply.status, reply.body
            info.headers = {"Content-Type": content_type}
            info.result = "SUCCESS" if b'"SUCCESS"' in reply.body else "FAILED"
            return info, None
        if reply.status >= 400 or not reply.body.lstrip().startswith(b"<"):
            raise errors.backend_error(
                f"The BigBlueButton server answered HTTP {reply.status} instead of an API response.")
        try:
            root = bbbxml.parse(reply.body)
        except bbbxml.XmlError:
            raise errors.backend_error() from None
        info.status, info.body, info.headers = 200, reply.body, dict(bbbxml.XML_HEADERS)
        info.result = bbbxml.text_of(root, "messageKey") or bbbxml.returncode(root) or "SUCCESS"
        return info, root

    async def routed(self, server: Server, call: Call, info: Answer, query: RawQuery | None = None,
                     **kwargs: Any) -> tuple[Answer, etree._Element | None]:
        try:
            reply = await self.forward(server, call, info, query, **kwargs)
        except BackendError as exc:
            raise errors.backend_timeout() if exc.timeout else errors.server_unavailable() from None
        return self.relay(reply, info, call)

    def server_of(self, record: MeetingRecord) -> Server:
        server = self.pool.get(record.server)
        if server is None or not server.healthy:
            raise errors.server_unavailable()
        return server

    async def forget(self, record: MeetingRecord, ended_at: int | None = None) -> None:
        self._running_cache.pop(record.key, None)
        self.forget_listing(record.server)
        if await self.meetings.forget(record):
            server = self.pool.get(record.server)
            if server is not None:
                server.note_end(record.meeting_id)
            if record.event_id:
                self.events.ended(record.event_id, ended_at or now_ms())

    # --- create ------------------------------------------------------------------------------------

    async def create(self, call: Call, info: Answer) -> Answer:
        meeting_id = call.param("meetingID")
        if not meeting_id:
            raise errors.missing_meeting_id()
        if is_internal_meeting_id(meeting_id):
            raise errors.invalid_parameter("meetingID has the form of an internal meeting ID")
        if has_reserved_meta(call):
            raise errors.invalid_parameters()
        if self.callbacks is not None:
            await self.callbacks.check_create(call)
        integration = call.integration
        if call.param("record").lower() == "true" and not integration.can_record:
            raise errors.permission_denied_record()
        key = meeting_key(integration.name, meeting_id)
        while (pending := self.meetings.creation_in_progress(key)) is not None:
            await asyncio.shield(pending)
        record = self.meetings.get(integration.name, meeting_id)
        if record is not None:
            server = await self.still_usable(record, info)
            if server is not None:
                return await self.create_on(server, call, info, record)
        limit = integration.max_meetings
        if limit is not None and self.meetings.count(integration.name) + self.meetings.creating(integration.name) >= limit:
            raise errors.permission_denied_meetings()
        self.meetings.begin_creation(key)
        created: MeetingRecord | None = None
        try:
            answer, created = await self.create_new(call, info)
            return answer
        finally:
            self.meetings.end_creation(key, created)

    async def still_usable(self, record: MeetingRecord, info: Answer) -> Server | None:
        """The server of a known meeting, or None when the meeting must be placed anew."""
        server = self.pool.get(record.server)
        reason = ""
        if server is None:
            reason = "its server was removed"
        elif not server.healthy:
            reason = f"its server is {server.status.name.lower()}"
        elif server.is_disabled or server.draining:
            running = await self.is_running_on(server, record)
            if running:
                return server
            reason = "its server is disabled or draining and the meeting is not running"
        else:
            return server
        log.info("meeting %s of %s is placed anew: %s", record.meeting_id, record.integration, reason)
        info.decision = {"replaced": record.server, "reason": reason}
        await self.forget(record)
        return None

    async def is_running_on(self, server: Server, record: MeetingRecord) -> bool:
        query = RawQuery.parse("meetingID=" + encode_value(record.meeting_id))
        try:
            reply = await self.backend.call(server.config, "isMeetingRunning", query.text,
                                            timeout_s=self.config.monitor.timeout_s)
            return bbbxml.text_of(bbbxml.parse(reply.body), "running") == "true"
        except (BackendError, bbbxml.XmlError):
            return False

    def requester_location(self, call: Call) -> tuple[float, float] | None:
        if self.locate is None or not self.config.geo.prefer_nearby:
            return None
        address = call.client_ip
        if call.forwarded_for and self._trusted(call.client_ip):
            address = call.forwarded_for.split(",")[0].strip()
        return self.locate(address)

    def _trusted(self, address: str) -> bool:
        """Whether X-Forwarded-For from this peer is believed (geo.trusted_proxies)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted_proxies)

    def placement(self, call: Call, exclude: frozenset[str] = frozenset()) -> Placement:
        meeting_id = call.param("meetingID")
        # Another integration's meeting with the same ID must not share a server with this one.
        others = frozenset(self.meetings.holders_of(meeting_id)) | exclude
        return place(
            self.pool, self.config.balancer, time.time(),
            preferred=call.param("preferredServer") or None,
            requester=self.requester_location(call),
            nearby_km=self.config.geo.nearby_km,
            exclude=others,
        )

    def create_query(self, call: Call, server: Server) -> tuple[RawQuery, list[PendingCallback]]:
        """The create a backend receives: LB-only parameters out, the LB's metadata and callbacks in."""
        query = call.query.without(*LB_ONLY_PARAMS)
        query = query.without(*(f"meta_{k}" for k in RESERVED_META), lowercase=True)
        voice_bridge = call.param("voiceBridge")
        if voice_bridge and self.voice_bridge_taken(server, voice_bridge):
            query = query.replaced("voiceBridge", self.free_voice_bridge(server))
        query = query.appended("meta_mconflb-guid", self.instance_id)
        query = query.appended("meta_mconflb-institution", call.integration.name)
        query = query.appended("meta_mconflb-institution-name", call.integration.name)
        if self.callbacks is None:
            return query, []
        return self.callbacks.rewrite_create(call, query)

    def voice_bridge_taken(self, server: Server, voice_bridge: str) -> bool:
        return self.meetings.voice_bridge_in_use(server.name, voice_bridge) or voice_bridge in server.voice_bridges

    def free_voice_bridge(self, server: Server) -> str:
        for _ in range(_VOICE_BRIDGE_ATTEMPTS):
            candidate = str(random.randint(70000, 79999))
            if not self.voice_bridge_taken(server, candidate):
                return candidate
        raise ApiError("nonUniqueVoiceBridge", "No free voice bridge is left on the chosen server.")

    async def create_on(self, server: Server, call: Call, info: Answer, record: MeetingRecord) -> Answer:
        """A create for a meeting the LB already placed: the server answers with BBB's own semantics."""
        query, pending = self.create_query(call, server)
        async with self.meetings.creation_lock(server.name, record.meeting_id):
            answer, root = await self.routed(server, call, info, query)
        if root is not None and is_success(root) and bbbxml.text_of(root, "messageKey") != "duplicateWarning":
            # The server had forgotten the meeting and created it again: a new session.
            await self.record_created(call, server, root, pending, replaces=record)
        return answer

    async def create_new(self, call: Call, info: Answer) -> tuple[Answer, MeetingRecord | None]:
        placement = self.placement(call)
        info.decision = {**(info.decision or {}), **placement.explain()}
        if not placement.order:
            raise errors.no_server_available()
        info.route = "routed"
        tried: list[str] = []
        meeting_id = call.param("meetingID")
        attempts = 0
        for server in placement.order:
            if attempts >= MAX_CREATE_ATTEMPTS:
                break
            async with self.meetings.creation_lock(server.name, meeting_id):
                if server.name in self.meetings.holders_of(meeting_id, other_than=call.integration.name):
                    # Another integration placed this ID here while this create waited: one backend
                    # meeting per ID, so this one goes elsewhere.
                    continue
                attempts += 1
                outcome = await self.create_attempt(server, call, info, placement, tried)
            if outcome is not None:
                return outcome
        info.decision["failover"] = tried
        raise errors.no_server_available()

    async def create_attempt(self, server: Server, call: Call, info: Answer, placement: Placement,
                             tried: list[str]) -> tuple[Answer, MeetingRecord | None] | None:
        """One create on one server, under its (server, meetingID) lock; None means try the next server."""
        meeting_id = call.param("meetingID")
        query, pending = self.create_query(call, server)
        server.note_create(meeting_id, time.time())
        try:
            reply = await self.forward(server, call, info, query)
        except BackendError as exc:
            server.note_end(meeting_id)
            tried.append(f"{server.name}: {exc}")
            log.warning("create of %s on %s failed, trying the next server: %s", meeting_id, server.name, exc)
            return None
        try:
            answer, root = self.relay(reply, info, call)
        except ApiError as exc:  # reachable but broken (a 5xx page): the next server may do
            server.note_end(meeting_id)
            tried.append(f"{server.name}: {exc.message}")
            log.warning("create of %s on %s failed, trying the next server: %s", meeting_id, server.name,
                        exc.message)
            return None
        if root is None or not is_success(root):
            server.note_end(meeting_id)
            return answer, None
        if (bbbxml.text_of(root, "messageKey") == "duplicateWarning"
                and not await self.owns_backend_meeting(server, call)):
            # The server already runs a meeting with this ID that the LB did not create for this
            # integration: its answer (passwords included) is someone else's.
            log.warning("create of %s by %s on %s conflicts with a meeting the LB did not create for it",
                        meeting_id, call.integration.name, server.name)
            raise ApiError("idNotUnique", "A meeting already exists with that meeting ID, but it belongs to "
                                          "another application.")
        if tried:
            info.decision["failover"] = tried
        log.info("placed meeting %s of %s on %s: %s; candidates %s%s", meeting_id, call.integration.name,
                 server.name, placement.reason, _scores(placement), f"; failover {tried}" if tried else "")
        record = await self.record_created(call, server, root, pending)
        return answer, record

    async def owns_backend_meeting(self, server: Server, call: Call) -> bool:
        """Whether the server's meeting with the call's ID was created by this LB for this integration."""
        query = RawQuery.parse("meetingID=" + encode_value(call.param("meetingID")))
        try:
            reply = await self.backend.call(server.config, "getMeetingInfo", query.text,
                                            timeout_s=self.config.monitor.timeout_s)
            root = bbbxml.parse(reply.body)
        except (BackendError, bbbxml.XmlError):
            return False
        return (is_success(root)
                and root.findtext("metadata/mconflb-institution") == call.integration.name
                and root.findtext("metadata/mconflb-guid") == self.instance_id)

    async def record_created(self, call: Call, server: Server, root: etree._Element,
                             pending: list[PendingCallback], replaces: MeetingRecord | None = None) -> MeetingRecord:
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
        self._running_cache.pop(record.key, None)
        self.forget_listing(server.name)
        await self.meetings.save(record)
        if record.internal_id:
            self.recordings[record.internal_id] = (server.name, record.integration)
        if pending and self.callbacks is not None:
            await self.callbacks.remember(pending, record)
        return record

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

    # --- join and meeting calls ----------------------------------------------------------------------

    async def join(self, call: Call, info: Answer) -> Answer:
        record = self.known_record(call)
        server = self.server_of(record)
        info.server = server.name
        role = call.param("role").upper()
        password = call.param("password")
        is_moderator = role == "MODERATOR" or (not role and password and password == record.moderator_pw)
        if call.param("redirect").lower() == "false":
            answer, root = await self.routed(server, call, info)
            if root is not None and is_success(root):
                self.note_join(server, record, call, bool(is_moderator))
            return answer
        self.note_join(server, record, call, bool(is_moderator))
        location = self.backend.signed_url(server.config, "join", call.query.text)
        info.route = "redirect"
        info.result = "redirect"
        return Answer(302, b"", {"Location": location, "Content-Type": bbbxml.CONTENT_TYPE,
                                 "Cache-Control": "no-cache"},
                      call=info.call, integration=info.integration, meeting_id=info.meeting_id,
                      checksum=info.checksum, route="redirect", server=server.name, result="redirect")

    def note_join(self, server: Server, record: MeetingRecord, call: Call, moderator: bool) -> None:
        server.note_join()
        self._running_cache.pop(record.key, None)  # a cached running=false would now be wrong
        if record.event_id:
            self.events.joined(record.event_id, call.param("fullName"), "moderator" if moderator else "attendee",
                               now_ms())

    async def end(self, call: Call, info: Answer) -> Answer:
        record = self.known_record(call)
        server = self.server_of(record)
        answer, root = await self.routed(server, call, info)
        if root is not None and (is_success(root) or bbbxml.text_of(root, "messageKey") == "notFound"):
            await self.forget(record)
        return answer

    async def is_meeting_running(self, call: Call, info: Answer) -> Answer:
        record = self.record_for(call)
        if record is None:
            return Answer.xml(bbbxml.success([("running", False)]), result="SUCCESS")
        ttl = self.config.running_cache_s
        now = time.monotonic()
        cached = self._running_cache.get(record.key) if ttl > 0 else None
        if cached is not None and cached[0] > now:
            info.server, info.route, info.result = record.server, "cached", "SUCCESS"
            return _with_info(Answer.xml(cached[1]), info)
        answer, root = await self.routed(self.server_of(record), call, info)
        if ttl > 0 and root is not None and is_success(root):
            if len(self._running_cache) > 100_000:
                self._running_cache.clear()
            self._running_cache[record.key] = (now + ttl, answer.body)
        return answer

    async def get_meeting_info(self, call: Call, info: Answer) -> Answer:
        record = self.known_record(call)
        answer, root = await self.routed(self.server_of(record), call, info)
        if root is not None and bbbxml.text_of(root, "messageKey") == "notFound":
            await self.forget(record)
        return answer

    async def routed_by_meeting(self, call: Call, info: Answer) -> Answer:
        record = self.known_record(call)
        answer, _ = await self.routed(self.server_of(record), call, info)
        return answer

    # --- merged calls ------------------------------------------------------------------------------------

    def fan_out_servers(self) -> list[Server]:
        """Every server that may hold meetings or recordings and is not known to be dead."""
        return [s for s in self.pool if s.healthy]

    async def fan_out(self, call_name: str, query: RawQuery, info: Answer,
                      servers: list[Server] | None = None) -> list[tuple[Server, etree._Element]]:
        """Ask servers concurrently; one that is down, slow or broken is left out, not fatal."""
        servers = self.fan_out_servers() if servers is None else servers
        timeout = self.config.monitor.timeout_s

        async def one(server: Server) -> tuple[Server, etree._Element] | None:
            started = time.perf_counter()
            try:
                reply = await self.backend.call(server.config, call_name, query.text, timeout_s=timeout)
                root = bbbxml.parse(reply.body)
            except (BackendError, bbbxml.XmlError) as exc:
                info.backend.append({"server": server.name, "call": call_name, "error": str(exc)[:200]})
                return None
            info.backend.append({"server": server.name, "call": call_name, "status": reply.status,
                                 "ms": round((time.perf_counter() - started) * 1000, 2)})
            if not is_success(root):
                return None
            return server, root

        results = await asyncio.gather(*(one(s) for s in servers))
        info.route = "merged"
        return [r for r in results if r is not None]

    @staticmethod
    def owner_of(node: etree._Element) -> str:
        """Meetings and recordings carry the creating integration in their metadata; others are default's."""
        return node.findtext("metadata/mconflb-institution") or "default"

    def visible_to(self, node: etree._Element, integration: IntegrationConfig) -> bool:
        return self.owner_of(node) == integration.name

    def remember_listing(self, server: Server, root: etree._Element, asked_at: float) -> Listing:
        """A server's getMeetings answer, kept for later getMeetings calls.

        ``asked_at`` (time.monotonic() when the request left): an answer asked for before the LB last
        changed that server's meetings is used once but not kept. The meetings are serialised only
        when a getMeetings needs them, not at every poll.
        """
        listing = Listing(server, root)
        if asked_at >= self._changed_at.get(server.name, 0.0):
            self._listings[server.name] = (asked_at, listing)
        return listing

    def forget_listing(self, server_name: str) -> None:
        """The LB changed this server's meetings: its next getMeetings must be fresh."""
        self._listings.pop(server_name, None)
        self._changed_at[server_name] = time.monotonic()

    async def _refresh_listings(self, servers: list[Server], info: Answer) -> None:
        asked_at = time.monotonic()
        known = {s.name for s in self.pool}
        for table in (self._listings, self._fresh, self._changed_at):
            for gone in [name for name in table if name not in known]:  # servers removed from the pool
                del table[gone]
        for server in servers:
            self._fresh.pop(server.name, None)  # a server that fails now is left out, not shown as it was
        try:
            for server, root in await self.fan_out("getMeetings", RawQuery.parse(""), info, servers):
                self._fresh[server.name] = self.remember_listing(server, root, asked_at)
        finally:
            for server in servers:
                self._refreshing.pop(server.name, None)

    async def get_meetings(self, call: Call, info: Answer) -> Answer:
        max_age = self.config.get_meetings_cache_s
        now = time.monotonic()
        listings: dict[str, Listing] = {}
        stale: list[Server] = []
        for server in self.fan_out_servers():
            cached = self._listings.get(server.name)
            if cached is not None and now - cached[0] <= max_age:
                listings[server.name] = cached[1]
            else:
                stale.append(server)
        if stale:
            # One refresh per server at a time: concurrent callers wait for it rather than
            # each asking every server again (a burst of 32 callers x 50 servers otherwise).
            mine = [s for s in stale if s.name not in self._refreshing]
            if mine:
                refresh = asyncio.ensure_future(self._refresh_listings(mine, info))
                for server in mine:
                    self._refreshing[server.name] = refresh
            waits = {id(f): f for s in stale if (f := self._refreshing.get(s.name)) is not None}
            await asyncio.gather(*waits.values(), return_exceptions=True)
            info.route = "merged"
            for server in stale:
                if (fresh := self._fresh.get(server.name)) is not None:
                    listings[server.name] = fresh
        else:
            info.route = "cached"
        owner = call.integration.name
        parts = [xml for server in self.fan_out_servers() if (listing := listings.get(server.name)) is not None
                 for who, xml in listing.meetings() if who == owner]
        info.result = "SUCCESS"
        if not parts:
            return _with_info(Answer.xml(bbbxml.success([
                ("meetings", []), ("messageKey", "noMeetings"),
                ("message", "no meetings were found on this server")])), info)
        return _with_info(Answer.xml(bbbxml.success([("meetings", bbbxml.Raw("".join(parts)))])), info)

    async def get_recordings(self, call: Call, info: Answer) -> Answer:
        paging = {"offset", "limit"}
        query = call.query.without(*paging)
        offset = _non_negative(call.param("offset"), "offset", 0)
        limit = _non_negative(call.param("limit"), "limit", None)
        meta_filters = call.meta()
        results = await self.fan_out("getRecordings", query, info)
        found: list[tuple[str, etree._Element]] = []
        for server, root in results:
            for recording in root.iterfind("recordings/recording"):
                if not self.visible_to(recording, call.integration):
                    continue
                if any(recording.findtext(f"metadata/{k}") != v for k, v in meta_filters.items()
                       if bbbxml.is_tag_name(k)):
                    continue
                record_id = recording.findtext("recordID") or ""
                if record_id:
                    self.recordings[record_id] = (server.name, call.integration.name)
                found.append((recording.findtext("startTime") or "0", recording))
        found.sort(key=lambda item: int(item[0]) if item[0].isdigit() else 0)
        selected = found[offset:] if limit is None else found[offset:offset + limit]
        info.result = "SUCCESS"
        if not selected:
            return _with_info(Answer.xml(bbbxml.success([
                ("recordings", []), ("messageKey", "noRecordings"),
                ("message", "There are no recordings for the meeting(s).")])), info)
        body = "".join(bbbxml.serialize(r) for _, r in selected)
        return _with_info(Answer.xml(bbbxml.success([("recordings", bbbxml.Raw(body))])), info)

    # --- recordings -------------------------------------------------------------------------------------------

    async def locate_recordings(self, record_ids: list[str], call: Call, info: Answer) -> dict[str, list[str]]:
        """Server name -> recordIDs it holds; unknown IDs are looked up on every server."""
        by_server: dict[str, list[str]] = {}
        owner = call.integration.name

        def known(record_id: str) -> str | None:
            server, holder = self.recordings.get(record_id, ("", ""))
            return server if holder == owner and self.pool.get(server) is not None else None

        unknown = [r for r in record_ids if known(r) is None]
        if unknown:
            query = RawQuery.parse("recordID=" + encode_value(",".join(unknown)) + "&state=any")
            for server, root in await self.fan_out("getRecordings", query, info):
                for recording in root.iterfind("recordings/recording"):
                    record_id = recording.findtext("recordID") or ""
                    if record_id in unknown and self.visible_to(recording, call.integration):
                        self.recordings[record_id] = (server.name, owner)
        for record_id in record_ids:
            server_name = known(record_id)
            if server_name is None:
                raise errors.recording_not_found()
            by_server.setdefault(server_name, []).append(record_id)
        return by_server

    async def recordings_action(self, call: Call, info: Answer) -> Answer:
        if call.name == "updateRecordings" and has_reserved_meta(call):
            raise errors.invalid_parameters()  # as on create: no recording is re-labelled as another's
        raw_ids = call.param("recordID")
        if not raw_ids:
            raise ApiError("missingParamRecordID", "You must specify one or more a record IDs.")
        record_ids = [r for r in (s.strip() for s in raw_ids.split(",")) if r]
        by_server = await self.locate_recordings(record_ids, call, info)
        if len(by_server) == 1:
            (server_name, _), = by_server.items()
            server = self.pool.get(server_name)
            if server is None:
                raise errors.server_unavailable()
            answer, _ = await self.routed(server, call, info)
            return answer
        # IDs spread over servers: each server gets its own subset, re-signed for it.
        answers: list[etree._Element] = []
        for server_name, ids in by_server.items():
            server = self.pool.get(server_name)
            if server is None:
                raise errors.server_unavailable()
            query = call.query.replaced("recordID", ",".join(ids))
            answer, root = await self.routed(server, call, info, query)
            if root is None or not is_success(root):
                return answer
            answers.append(root)
        info.route = "merged"
        return _with_info(Answer(200, bbbxml.serialize(answers[-1]).encode(), dict(bbbxml.XML_HEADERS)), info)

    async def routed_by_recording(self, call: Call, info: Answer) -> Answer:
        record_id = call.param("recordID")
        if not record_id:
            if call.name in JSON_CALLS:
                return _json_error("missingParameter", "You must specify a recordID.")
            raise ApiError("missingParamRecordID", "You must specify one or more a record IDs.")
        try:
            by_server = await self.locate_recordings([record_id], call, info)
        except ApiError:
            if call.name in JSON_CALLS:
                return _json_error("noRecordings", "No recording found for " + record_id)
            raise
        server = self.pool.get(next(iter(by_server)))
        if server is None:
            raise errors.server_unavailable()
        answer, _ = await self.routed(server, call, info)
        return answer

    # --- LB-only calls -------------------------------------------------------------------------------------------

    async def get_servers(self, call: Call, info: Answer) -> Answer:
        servers = []
        for server in self.pool:
            geo = server.geoloc
            servers.append(("server", [
                ("name", server.name), ("address", server.address), ("url", server.base_url),
                ("apiUrl", server.api_url), ("status", int(server.status)),
                ("disableState", int(server.disable_state)),
                ("geoloc", [(key, geo.get(key, "")) for key in GEOLOC_FIELDS]),
                ("isDisabled", server.is_disabled),
            ]))
        info.result = "SUCCESS"
        return _with_info(Answer.xml(bbbxml.success([("servers", servers)])), info)

    async def get_meeting_events(self, call: Call, info: Answer) -> Answer:
        try:
            query = parse_query(call.pairs)
        except EventQueryError as exc:
            raise errors.invalid_parameter(str(exc)) from None
        found = await self.events.query(call.integration.name, query)
        info.result = "SUCCESS"
        body = bbbxml.success([("events", [("event", e.to_xml_fields()) for e in found])])
        return _with_info(Answer.xml(body), info)

    # --- config.xml ----------------------------------------------------------------------------------------------

    async def get_default_config_xml(self, call: Call, info: Answer) -> Answer:
        candidates = [s for s in self.pool if s.healthy and not s.is_disabled] or self.fan_out_servers()
        if not candidates:
            raise errors.no_server_available()
        server = candidates[0]
        try:
            reply = await self.forward(server, call, info)
        except BackendError as exc:
            raise errors.backend_timeout() if exc.timeout else errors.server_unavailable() from None
        info.route = "routed"
        try:
            root = bbbxml.parse(reply.body)
        except bbbxml.XmlError:
            raise errors.backend_error() from None
        if root.tag == "response":
            return self.relay(reply, info, call)[0]
        text = await configxml.rewrite_urls_off_loop(reply.body.decode("utf-8", "replace"), server.base_url,
                                                    self.config.public_url)
        info.result = "SUCCESS"
        return _with_info(Answer(200, text.encode(), dict(bbbxml.XML_HEADERS)), info)

    async def set_config_xml(self, call: Call, info: Answer) -> Answer:
        record = self.known_record(call)
        server = self.server_of(record)
        config_xml = call.param("configXML")
        if not config_xml:
            raise ApiError("configXMLError", "You did not pass a config XML.")
        try:
            bbbxml.parse(config_xml.encode())
        except bbbxml.XmlError:
            raise ApiError("configXMLError", "The config XML is not valid XML.") from None
        rewritten = await configxml.rewrite_urls_off_loop(config_xml, self.config.public_url, server.base_url)
        pairs = [(k, rewritten if k == "configXML" else v) for k, v in call.pairs if k != "checksum"]
        body_query = checksum.legacy_params_query(pairs)
        signed = checksum.sign(call.name, body_query, server.config.secret, server.config.checksum)
        try:
            reply = await self.backend.call(server.config, call.name, "", method="POST", body=signed.encode(),
                                            content_type=FORM)
        except BackendError as exc:
            raise errors.backend_timeout() if exc.timeout else errors.server_unavailable() from None
        info.backend.append({"server": server.name, "call": call.name, "status": reply.status})
        info.server = server.name
        return self.relay(reply, info, call)[0]


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
                found.append((Gateway.owner_of(meeting), bbbxml.serialize(meeting)))
            self._meetings, self.root = found, None
        return self._meetings


GEOLOC_FIELDS = ("address", "ip", "countryCode", "countryCode3", "countryName", "city", "latitude", "longitude",
                 "continentCode")


def _scores(placement: Placement) -> str:
    return ", ".join(f"{c['server']}={c['score']}" + (f" ({c['excluded']})" if "excluded" in c else "")
                     for c in placement.scores)


def _with_info(answer: Answer, info: Answer) -> Answer:
    for attr in ("call", "integration", "meeting_id", "checksum", "route", "server", "decision", "backend", "result"):
        setattr(answer, attr, getattr(info, attr))
    return answer


def _json_error(key: str, message: str) -> Answer:
    body = json.dumps({"response": {"returncode": "FAILED", "messageKey": key, "message": message}}).encode()
    return Answer(200, body, {"Content-Type": "application/json"}, result=key)


def _non_negative(value: str, name: str, default: int | None) -> int | None:
    if value == "":
        return default
    if not value.isdigit() or len(value) > 9:
        raise errors.invalid_parameter(f"{name} must be a whole number")
    return int(value)


@functools.cache
def _revision() -> str:
    """The git commit this code runs from, read from the checkout's files (no subprocess)."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                return ref_file.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
            return ""
        return head
    except OSError:
        return ""
