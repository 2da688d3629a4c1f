"""Calls on recordings: each recordID goes to the server that holds it, for the integration that owns it."""

from __future__ import annotations

import json

from lxml import etree

from lb_core import bbbxml, errors
from lb_core.api import Answer
from lb_core.calls import GET_ONLY, bbb_call
from lb_core.errors import ApiError
from lb_core.forwarding import is_success
from lb_core.handlers.context import Context, has_reserved_meta
from lb_core.handlers.listings import visible_to
from lb_core.query import RawQuery, encode_value


async def locate_recordings(ctx: Context, record_ids: list[str]) -> dict[str, list[str]]:
    """Server name -> recordIDs it holds; unknown IDs are looked up on every server."""
    index, owner = ctx.services.recordings, ctx.call.integration.name
    unknown = [r for r in record_ids if index.server_for(r, owner) is None]
    if unknown:
        query = RawQuery.parse("recordID=" + encode_value(",".join(unknown)) + "&state=any")
        for server, root in await ctx.services.forwarder.fan_out("getRecordings", query, ctx.trace):
            for recording in root.iterfind("recordings/recording"):
                record_id = recording.findtext("recordID") or ""
                if record_id in unknown and visible_to(recording, ctx.call.integration):
                    index.learn(record_id, server.name, owner)
    by_server: dict[str, list[str]] = {}
    for record_id in record_ids:
        server_name = index.server_for(record_id, owner)
        if server_name is None:
            raise errors.recording_not_found()
        by_server.setdefault(server_name, []).append(record_id)
    return by_server


@bbb_call("publishRecordings", "deleteRecordings", methods=GET_ONLY, route="routed per ID")
@bbb_call("updateRecordings", route="routed per ID")
async def recordings_action(ctx: Context) -> Answer:
    call = ctx.call
    if call.name == "updateRecordings" and has_reserved_meta(call):
        raise errors.invalid_parameters()  # as on create: no recording is re-labelled as another's
    raw_ids = call.param("recordID")
    if not raw_ids:
        raise ApiError("missingParamRecordID", "You must specify one or more a record IDs.")
    record_ids = [r for r in (s.strip() for s in raw_ids.split(",")) if r]
    by_server = await locate_recordings(ctx, record_ids)
    if len(by_server) == 1:
        (server_name, _), = by_server.items()
        answer, _ = await ctx.routed(ctx.server_named(server_name))
        return answer
    # IDs spread over servers: each server gets its own subset, re-signed for it.
    answers: list[etree._Element] = []
    for server_name, ids in by_server.items():
        server = ctx.server_named(server_name)
        answer, root = await ctx.routed(server, call.query.replaced("recordID", ",".join(ids)))
        if root is None or not is_success(root):
            return answer
        answers.append(root)
    ctx.trace.route = "merged"
    return Answer(200, bbbxml.serialize(answers[-1]).encode(), dict(bbbxml.XML_HEADERS))


@bbb_call("getRecordingTextTracks", json=True)
@bbb_call("putRecordingTextTrack", content_types=("multipart/form-data",), json=True, upload=True)
async def routed_by_recording(ctx: Context) -> Answer:
    """Text tracks: BBB answers these in JSON, its errors too."""
    record_id = ctx.call.param("recordID")
    if not record_id:
        return _json_error(ctx, "missingParameter", "You must specify a recordID.")
    try:
        by_server = await locate_recordings(ctx, [record_id])
    except ApiError:
        return _json_error(ctx, "noRecordings", "No recording found for " + record_id)
    answer, _ = await ctx.routed(ctx.server_named(next(iter(by_server))))
    return answer


def _json_error(ctx: Context, key: str, message: str) -> Answer:
    ctx.trace.result = key
    body = json.dumps({"response": {"returncode": "FAILED", "messageKey": key, "message": message}}).encode()
    return Answer(200, body, {"Content-Type": "application/json"})
