"""create: placement of a new meeting, failover between servers, and a known meeting's own server.

A room of its own (not in ``handlers/meetings.py``): it is the one call that chooses a server, rewrites
the query for it (the LB's metadata and callbacks, a free voice bridge) and tries the next on failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from lxml import etree

from lb_core import bbbxml, errors
from lb_core.api import FORM, Answer
from lb_core.backend import BackendError
from lb_core.balancer import Placement
from lb_core.callbacks import PendingCallback
from lb_core.calls import bbb_call
from lb_core.errors import ApiError
from lb_core.forwarding import is_success
from lb_core.handlers.context import RESERVED_META, Context, has_reserved_meta, is_internal_meeting_id
from lb_core.meetings import MeetingRecord, meeting_key
from lb_core.pool import Server
from lb_core.query import RawQuery, encode_value

log = logging.getLogger("bbb_lb.gateway")

LB_ONLY_PARAMS = ("preferredServer",)
MAX_CREATE_ATTEMPTS = 3
_VOICE_BRIDGE_ATTEMPTS = 200


@bbb_call("create", content_types=(FORM, "multipart/form-data", "application/xml", "text/xml"), upload=True,
          route="placed")
async def create(ctx: Context) -> Answer:
    call, services = ctx.call, ctx.services
    meeting_id = call.param("meetingID")
    if not meeting_id:
        raise errors.missing_meeting_id()
    if is_internal_meeting_id(meeting_id):
        raise errors.invalid_parameter("meetingID has the form of an internal meeting ID")
    if has_reserved_meta(call):
        raise errors.invalid_parameters()
    ctx.call = call = services.policy.rewrite(call)  # the integration's rules (lb_core.rules)
    if services.callbacks is not None:
        await services.callbacks.check_create(call)
    integration = call.integration
    if call.param("record").lower() == "true" and not integration.can_record:
        raise services.policy.refused(integration.name, "record", errors.permission_denied_record())
    meetings, creates = services.meetings, services.creates
    key = meeting_key(integration.name, meeting_id)
    while (pending := creates.in_progress(key)) is not None:
        await asyncio.shield(pending)
    # Several processes: one creates this meeting at a time, and each reads the others' outcome.
    async with creates.guard(key, services.config.backend_timeout_s * MAX_CREATE_ATTEMPTS):
        if meetings.cluster is not None:
            await meetings.refresh(integration.name, meeting_id)
        record = meetings.get(integration.name, meeting_id)
        if record is not None:
            server = await still_usable(ctx, record)
            if server is not None:
                return await create_on(ctx, server, record)
        limit = integration.max_meetings
        if limit is not None and meetings.count(integration.name) + creates.creating(integration.name) >= limit:
            raise services.policy.refused(integration.name, "meetings", errors.permission_denied_meetings())
        creates.begin(key)
        created: MeetingRecord | None = None
        try:
            answer, created = await create_new(ctx)
            return answer
        finally:
            creates.end(key, created)


async def still_usable(ctx: Context, record: MeetingRecord) -> Server | None:
    """The server of a known meeting, or None when the meeting must be placed anew."""
    server = ctx.services.pool.get(record.server)
    reason = ""
    if server is None:
        reason = "its server was removed"
    elif not server.healthy:
        reason = f"its server is {server.status.name.lower()}"
    elif server.is_disabled or server.draining:
        if await is_running_on(ctx, server, record):
            return server
        reason = "its server is disabled or draining and the meeting is not running"
    else:
        return server
    log.info("meeting %s of %s is placed anew: %s", record.meeting_id, record.integration, reason)
    ctx.trace.decision = {"replaced": record.server, "reason": reason}
    await ctx.services.lifecycle.forget(record)
    return None


async def is_running_on(ctx: Context, server: Server, record: MeetingRecord) -> bool:
    query = RawQuery.parse("meetingID=" + encode_value(record.meeting_id))
    try:
        reply = await ctx.services.backend.call(server.config, "isMeetingRunning", query.text,
                                                timeout_s=ctx.services.config.monitor.timeout_s)
        return bbbxml.text_of(bbbxml.parse(reply.body), "running") == "true"
    except (BackendError, bbbxml.XmlError):
        return False


def create_query(ctx: Context, server: Server) -> tuple[RawQuery, list[PendingCallback]]:
    """The create a backend receives: LB-only parameters out, the LB's metadata and callbacks in."""
    call, services = ctx.call, ctx.services
    query = call.query.without(*LB_ONLY_PARAMS)
    query = query.without(*(f"meta_{k}" for k in RESERVED_META), lowercase=True)
    voice_bridge = call.param("voiceBridge")
    if voice_bridge and voice_bridge_taken(ctx, server, voice_bridge):
        query = query.replaced("voiceBridge", free_voice_bridge(ctx, server))
    query = query.appended("meta_mconflb-guid", services.instance_id)
    query = query.appended("meta_mconflb-institution", call.integration.name)
    query = query.appended("meta_mconflb-institution-name", call.integration.name)
    rec_server = services.config.recordings.server
    if rec_server is not None:  # the Mconf-LB's way of telling each BBB server where its recordings go
        query = query.appended("meta_mconflb-rec-server", rec_server.id)
        query = query.appended("meta_mconflb-rec-server-url", rec_server.url)
        query = query.appended("meta_mconflb-rec-server-key", rec_server.key)
    if services.callbacks is None:
        return query, []
    return services.callbacks.rewrite_create(call, query)


def voice_bridge_taken(ctx: Context, server: Server, voice_bridge: str) -> bool:
    return ctx.services.meetings.voice_bridge_in_use(server.name, voice_bridge) or voice_bridge in server.voice_bridges


def free_voice_bridge(ctx: Context, server: Server) -> str:
    for _ in range(_VOICE_BRIDGE_ATTEMPTS):
        candidate = str(random.randint(70000, 79999))
        if not voice_bridge_taken(ctx, server, candidate):
            return candidate
    raise ApiError("nonUniqueVoiceBridge", "No free voice bridge is left on the chosen server.")


async def create_on(ctx: Context, server: Server, record: MeetingRecord) -> Answer:
    """A create for a meeting the LB already placed: the server answers with BBB's own semantics."""
    query, pending = create_query(ctx, server)
    async with ctx.services.creates.backend_lock(server.name, record.meeting_id):
        answer, root = await ctx.routed(server, query)
    if root is not None and is_success(root) and bbbxml.text_of(root, "messageKey") != "duplicateWarning":
        # The server had forgotten the meeting and created it again: a new session.
        await recorded(ctx, server, root, pending, replaces=record)
    return answer


async def create_new(ctx: Context) -> tuple[Answer, MeetingRecord | None]:
    call, trace, meetings = ctx.call, ctx.trace, ctx.services.meetings
    placement = await ctx.services.placer.place_shared(call)
    trace.decide(**placement.explain())
    if not placement.order:
        raise errors.no_server_available()
    trace.route = "routed"
    tried: list[str] = []
    meeting_id = call.param("meetingID")
    attempts = 0
    for server in placement.order:
        if attempts >= MAX_CREATE_ATTEMPTS:
            break
        async with ctx.services.creates.backend_lock(server.name, meeting_id):
            if server.name in meetings.holders_of(meeting_id, other_than=call.integration.name):
                # Another integration placed this ID here while this create waited: one backend
                # meeting per ID, so this one goes elsewhere.
                continue
            attempts += 1
            outcome = await create_attempt(ctx, server, placement, tried)
        if outcome is not None:
            return outcome
    trace.decide(failover=tried)
    raise errors.no_server_available()


async def create_attempt(ctx: Context, server: Server, placement: Placement,
                         tried: list[str]) -> tuple[Answer, MeetingRecord | None] | None:
    """One create on one server, under its (server, meetingID) lock; None means try the next server."""
    query, pending = create_query(ctx, server)
    bridge = await claim_shared_voice_bridge(ctx, server, query)
    if bridge is None:
        return await _create_attempt(ctx, server, placement, tried, query, pending)
    cluster = ctx.services.meetings.cluster
    assert cluster is not None
    outcome = None
    try:
        outcome = await _create_attempt(ctx, server, placement, tried, query.replaced("voiceBridge", bridge), pending)
        return outcome
    finally:
        if outcome is None or outcome[1] is None:  # no meeting holds it
            await cluster.release_voice_bridge(server.name, bridge)


async def claim_shared_voice_bridge(ctx: Context, server: Server, query: RawQuery) -> str | None:
    """With several processes, the voice bridge this create asks for is claimed in Redis (a set per server),
    so two processes never give one bridge to two meetings; None when the call names none or one process
    runs alone."""
    cluster = ctx.services.meetings.cluster
    if cluster is None:
        return None
    asked = dict(query.pairs()).get("voiceBridge", "")
    if not asked:
        return None
    candidate = asked
    for _ in range(_VOICE_BRIDGE_ATTEMPTS):
        if await cluster.claim_voice_bridge(server.name, candidate):
            return candidate
        candidate = free_voice_bridge(ctx, server)
    raise ApiError("nonUniqueVoiceBridge", "No free voice bridge is left on the chosen server.")


async def _create_attempt(ctx: Context, server: Server, placement: Placement, tried: list[str], query: RawQuery,
                          pending: list[PendingCallback]) -> tuple[Answer, MeetingRecord | None] | None:
    call, forwarder = ctx.call, ctx.services.forwarder
    meeting_id = call.param("meetingID")
    server.note_create(meeting_id, time.time())
    try:
        reply = await forwarder.forward(server, call, ctx.trace, query)
    except BackendError as exc:
        server.note_end(meeting_id)
        tried.append(f"{server.name}: {exc}")
        log.warning("create of %s on %s failed, trying the next server: %s", meeting_id, server.name, exc)
        return None
    try:
        answer, root = forwarder.relay(reply, ctx.trace)
    except ApiError as exc:  # reachable but broken (a 5xx page): the next server may do
        server.note_end(meeting_id)
        tried.append(f"{server.name}: {exc.message}")
        log.warning("create of %s on %s failed, trying the next server: %s", meeting_id, server.name, exc.message)
        return None
    if root is None or not is_success(root):
        server.note_end(meeting_id)
        return answer, None
    if bbbxml.text_of(root, "messageKey") == "duplicateWarning" and not await owns_backend_meeting(ctx, server):
        # The server already runs a meeting with this ID that the LB did not create for this
        # integration: its answer (passwords included) is someone else's.
        log.warning("create of %s by %s on %s conflicts with a meeting the LB did not create for it",
                    meeting_id, call.integration.name, server.name)
        raise ApiError("idNotUnique", "A meeting already exists with that meeting ID, but it belongs to "
                                      "another application.")
    if tried:
        ctx.trace.decide(failover=tried)
    log.info("placed meeting %s of %s on %s: %s; candidates %s%s", meeting_id, call.integration.name,
             server.name, placement.reason, _scores(placement), f"; failover {tried}" if tried else "")
    record = await recorded(ctx, server, root, pending)
    return answer, record


async def owns_backend_meeting(ctx: Context, server: Server) -> bool:
    """Whether the server's meeting with the call's ID was created by this LB for this integration."""
    query = RawQuery.parse("meetingID=" + encode_value(ctx.call.param("meetingID")))
    try:
        reply = await ctx.services.backend.call(server.config, "getMeetingInfo", query.text,
                                                timeout_s=ctx.services.config.monitor.timeout_s)
        root = bbbxml.parse(reply.body)
    except (BackendError, bbbxml.XmlError):
        return False
    return (is_success(root)
            and root.findtext("metadata/mconflb-institution") == ctx.call.integration.name
            and root.findtext("metadata/mconflb-guid") == ctx.services.instance_id)


async def recorded(ctx: Context, server: Server, root: etree._Element, pending: list[PendingCallback],
                   replaces: MeetingRecord | None = None) -> MeetingRecord:
    """The create succeeded: the meeting is recorded, then its callbacks (they name the record)."""
    record = await ctx.services.lifecycle.created(ctx.call, server, root, replaces=replaces)
    if pending and ctx.services.callbacks is not None:
        await ctx.services.callbacks.remember(pending, record)
    return record


def _scores(placement: Placement) -> str:
    return ", ".join(f"{c['server']}={c['score']}" + (f" ({c['excluded']})" if "excluded" in c else "")
                     for c in placement.scores)
