"""Calls on recordings: each recordID goes to the server that holds it, for the integration that owns it."""

from __future__ import annotations

import json
from typing import Any

from lb_core import bbbxml, errors
from lb_core.api import Answer
from lb_core.calls import GET_ONLY, bbb_call
from lb_core.errors import ApiError
from lb_core.handlers.context import Context, has_reserved_meta
from lb_core.handlers.listings import visible_to
from lb_core.query import RawQuery, encode_value
from lb_core.recording_docs import check_record_id_items


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


@bbb_call("publishRecordings", "deleteRecordings", methods=GET_ONLY, route="index")
@bbb_call("updateRecordings", route="index")
async def recordings_action(ctx: Context) -> Answer:
    """Changes the index (the truth) and the stored files; the origin server is told when it is alive."""
    call = ctx.call
    if call.name == "updateRecordings" and has_reserved_meta(call):
        raise errors.invalid_parameters()  # as on create: no recording is re-labelled as another's
    raw_ids = call.param("recordID")
    if not raw_ids:
        raise ApiError("missingParamRecordID", "You must specify one or more a record IDs.")
    publish = call.param("publish")
    if call.name == "publishRecordings" and not publish:
        raise ApiError("missingParamPublish", "You must specify a publish value true or false.")
    record_ids = list(dict.fromkeys(r for r in (s.strip() for s in raw_ids.split(",")) if r))[:1000]
    docs = await indexed_recordings(ctx, record_ids)
    changes = ctx.services.recording_changes
    assert changes is not None
    if call.name == "publishRecordings":
        flag = publish.strip().lower() == "true"
        await changes.change(docs, state="published" if flag else "unpublished")
        return ctx.success([("published", flag)])
    if call.name == "deleteRecordings":
        await changes.change(docs, state="deleted")
        return ctx.success([("deleted", True)])
    meta = {k.lower(): v for k, v in call.meta().items() if bbbxml.is_tag_name(k.lower())}
    await changes.change(docs, meta=meta)
    return ctx.success([("updated", True)])


async def learn_unindexed(ctx: Context, record_ids: list[str]) -> None:
    """Recordings the index does not know by ID are asked of the live servers (bounded: 100 IDs per call).

    In getRecordings an item is a prefix (bbb-web's wildcard): one that matches none of the caller's
    recordings is asked for, and what the servers answer under it is learnt."""
    index = ctx.services.recordings
    prefixes = ctx.call.name == "getRecordings"
    if prefixes:
        check_record_id_items(record_ids)
        owner = ctx.call.integration.name
        missing = [r for r in record_ids if not index.knows_prefix(owner, r)][:100]
    else:
        missing = [r for r in record_ids if index.get(r) is None][:100]
    if not missing:
        return
    query = RawQuery.parse("recordID=" + encode_value(",".join(missing)) + "&state=any")
    for server, root in await ctx.services.forwarder.fan_out("getRecordings", query, ctx.trace):
        for node in root.iterfind("recordings/recording"):
            record_id = node.findtext("recordID") or ""
            if record_id in missing or (prefixes and any(record_id.startswith(p) for p in missing)):
                await index.synced(server.name, node)


async def indexed_recordings(ctx: Context, record_ids: list[str]) -> list[dict[str, Any]]:
    """The caller's recordings by ID, not deleted; one not indexed yet is looked for on the live servers."""
    index, owner = ctx.services.recordings, ctx.call.integration.name
    await learn_unindexed(ctx, record_ids)
    docs = [index.owned(r, owner) for r in record_ids]
    found = [d for d in docs if d is not None and d.get("state") != "deleted"]
    if len(found) != len(record_ids):
        raise errors.recording_not_found()
    return found


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
