"""Calls on one meeting the LB placed: join, end, isMeetingRunning, getMeetingInfo and the routed extras.

Each goes to the meeting's server, found from the calling integration's own meetings only (create is in
``handlers/create.py``: placement and failover make it a room of its own).
"""

from __future__ import annotations

import time

from lb_core import bbbxml
from lb_core.api import Answer
from lb_core.calls import GET_ONLY, bbb_call
from lb_core.forwarding import is_success
from lb_core.handlers.context import Context


@bbb_call("join", methods=GET_ONLY, route="redirect")
async def join(ctx: Context) -> Answer:
    trace, lifecycle, policy = ctx.trace, ctx.services.lifecycle, ctx.services.policy
    record = ctx.require_meeting()
    server = ctx.server_of(record)
    trace.server = server.name
    ctx.call = call = policy.rewrite(ctx.call)  # the integration's rules (lb_core.rules)
    role = call.param("role").upper()
    password = call.param("password")
    is_moderator = bool(role == "MODERATOR" or (not role and password and password == record.moderator_pw))
    place = policy.join_place(call.integration, is_moderator)  # max_participants, or permissionDenied
    if call.param("redirect").lower() == "false":
        try:  # the place counts while the backend is asked, so concurrent joins cannot overshoot
            answer, root = await ctx.routed(server)
        finally:
            place.release()
        if root is not None and is_success(root):
            policy.participants.joined(record.integration, server.name, time.monotonic())
            lifecycle.joined(server, record, call, is_moderator)
        return answer
    place.release()
    policy.participants.joined(record.integration, server.name, time.monotonic())
    lifecycle.joined(server, record, call, is_moderator)
    location = ctx.services.backend.signed_url(server.config, "join", call.query.text)
    trace.route = trace.result = "redirect"
    return Answer(302, b"", {"Location": location, "Content-Type": bbbxml.CONTENT_TYPE, "Cache-Control": "no-cache"})


@bbb_call("end")
async def end(ctx: Context) -> Answer:
    record = ctx.require_meeting()
    answer, root = await ctx.routed(ctx.server_of(record))
    if root is not None and (is_success(root) or bbbxml.text_of(root, "messageKey") == "notFound"):
        await ctx.services.lifecycle.forget(record)
    return answer


@bbb_call("isMeetingRunning")
async def is_meeting_running(ctx: Context) -> Answer:
    """Answered from a short cache per meeting: integrations poll it while their users wait."""
    record = ctx.meeting_or_none()
    if record is None:
        return ctx.success([("running", False)])
    running = ctx.services.lifecycle.running
    ttl = ctx.services.config.running_cache_s
    now = time.monotonic()
    cached = running.get(record.key) if ttl > 0 else None
    if cached is not None and cached[0] > now:
        ctx.trace.server, ctx.trace.route, ctx.trace.result = record.server, "cached", "SUCCESS"
        return Answer.xml(cached[1])
    answer, root = await ctx.routed(ctx.server_of(record))
    if ttl > 0 and root is not None and is_success(root):
        running[record.key] = (now + ttl, answer.body)
    return answer


@bbb_call("getMeetingInfo")
async def get_meeting_info(ctx: Context) -> Answer:
    record = ctx.require_meeting()
    answer, root = await ctx.routed(ctx.server_of(record))
    if root is not None and bbbxml.text_of(root, "messageKey") == "notFound":
        await ctx.services.lifecycle.forget(record)
    return answer


@bbb_call("insertDocument", content_types=("application/xml", "text/xml"), upload=True)
@bbb_call("sendChatMessage")
async def routed_by_meeting(ctx: Context) -> Answer:
    answer, _ = await ctx.routed(ctx.server_of(ctx.require_meeting()))
    return answer
