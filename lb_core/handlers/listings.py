"""getMeetings and getRecordings: merged from every live server, each integration seeing only its own."""

from __future__ import annotations

from lxml import etree

from lb_core import bbbxml, errors
from lb_core.api import Answer
from lb_core.calls import bbb_call
from lb_core.config import IntegrationConfig
from lb_core.handlers.context import Context
from lb_core.listings import owner_of


def visible_to(node: etree._Element, integration: IntegrationConfig) -> bool:
    return owner_of(node) == integration.name


@bbb_call("getMeetings", route="merged")
async def get_meetings(ctx: Context) -> Answer:
    listings = await ctx.services.listings.current(ctx.trace)
    owner = ctx.call.integration.name
    parts = [xml for server in ctx.services.forwarder.fan_out_servers()
             if (listing := listings.get(server.name)) is not None
             for who, xml in listing.meetings() if who == owner]
    if not parts:
        return ctx.success([("meetings", []), ("messageKey", "noMeetings"),
                            ("message", "no meetings were found on this server")])
    return ctx.success([("meetings", bbbxml.Raw("".join(parts)))])


@bbb_call("getRecordings", route="merged")
async def get_recordings(ctx: Context) -> Answer:
    call = ctx.call
    query = call.query.without("offset", "limit")
    offset = _non_negative(call.param("offset"), "offset", 0) or 0
    limit = _non_negative(call.param("limit"), "limit", None)
    meta_filters = call.meta()
    results = await ctx.services.forwarder.fan_out("getRecordings", query, ctx.trace)
    found: list[tuple[str, etree._Element]] = []
    for server, root in results:
        for recording in root.iterfind("recordings/recording"):
            if not visible_to(recording, call.integration):
                continue
            if any(recording.findtext(f"metadata/{k}") != v for k, v in meta_filters.items()
                   if bbbxml.is_tag_name(k)):
                continue
            record_id = recording.findtext("recordID") or ""
            if record_id:
                ctx.services.recordings.learn(record_id, server.name, call.integration.name)
            found.append((recording.findtext("startTime") or "0", recording))
    found.sort(key=lambda item: int(item[0]) if item[0].isdigit() else 0)
    selected = found[offset:] if limit is None else found[offset:offset + limit]
    if not selected:
        return ctx.success([("recordings", []), ("messageKey", "noRecordings"),
                            ("message", "There are no recordings for the meeting(s).")])
    body = "".join(bbbxml.serialize(r) for _, r in selected)
    return ctx.success([("recordings", bbbxml.Raw(body))])


def _non_negative(value: str, name: str, default: int | None) -> int | None:
    if value == "":
        return default
    if not value.isdigit() or len(value) > 9:
        raise errors.invalid_parameter(f"{name} must be a whole number")
    return int(value)
