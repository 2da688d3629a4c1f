"""getMeetings (merged from every live server) and getRecordings (from the index); each integration sees its own."""

from __future__ import annotations

from typing import Any

from lxml import etree

from lb_core import bbbxml, errors
from lb_core.api import Answer
from lb_core.calls import bbb_call
from lb_core.config_sections import IntegrationConfig
from lb_core.handlers.context import Context
from lb_core.listings import owner_of
from lb_core.recording_docs import Query, recording_fields


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


@bbb_call("getRecordings", route="index")
async def get_recordings(ctx: Context) -> Answer:
    """Answered from the recordings index: recordings of servers that are down or gone stay listed."""
    call = ctx.call
    query = Query(
        meeting_ids=_id_list(call.param("meetingID")),
        record_ids=_id_list(call.param("recordID")),
        states=Query.parse_states(call.param("state")),
        meta={k.lower(): v for k, v in call.meta().items()},
        offset=_non_negative(call.param("offset"), "offset", 0) or 0,
        limit=_non_negative(call.param("limit"), "limit", None),
    )
    services = ctx.services
    if query.record_ids:
        # An ID the index does not know yet (processed since the last sync) is looked up on the live servers.
        from lb_core.handlers.recordings import learn_unindexed
        await learn_unindexed(ctx, query.record_ids)
    selected, total = services.recordings.query(call.integration.name, query)
    if not selected:
        return ctx.success([("recordings", []), ("messageKey", "noRecordings"),
                            ("message", "There are no recordings for the meeting(s).")])
    base = services.config.recordings_public_url
    fields: list[tuple[str, Any]] = [("recordings", [("recording", recording_fields(doc, base)) for doc in selected])]
    if call.param("offset") or call.param("limit"):
        fields.append(("totalElements", total))
    return ctx.success(fields)


def _id_list(raw: str) -> list[str]:
    return [part for part in (p.strip() for p in raw.split(",")) if part][:1000]


def _non_negative(value: str, name: str, default: int | None) -> int | None:
    if value == "":
        return default
    if not value.isdigit() or len(value) > 9:
        raise errors.invalid_parameter(f"{name} must be a whole number")
    return int(value)
