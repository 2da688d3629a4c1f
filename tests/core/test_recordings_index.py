"""Recordings outlive their servers: the index (sync, changes, pushes), uploads, playback, in process."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from lb_core.recording_docs import Query
from lb_core.recording_index import DAY_MS
from tests.conftest import serving
from tests.core.conftest import PUBLIC_URL


def record_ids(reply) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.findtext("recordID") for r in reply.xml().iterfind("recordings/recording")]


async def synced(lb) -> None:  # type: ignore[no-untyped-def]
    await lb.lb.recording_sync.sync_all()


# --- sync ----------------------------------------------------------------------------------------------


async def test_a_synced_recording_stays_listed_while_its_server_is_down_and_after_it_is_removed(lb, sim):
    sim.add_recording("bbb2", "room", "rec-2", meta={"presenter": "joe"})
    await synced(lb)
    await sim.fault("bbb2", "refuse")
    await lb.poll(rounds=3)
    assert record_ids(await lb.call("getRecordings", {"meetingID": "room"})) == ["rec-2"]
    await lb.lb.server_controls.remove_server("bbb2")
    await synced(lb)
    reply = await lb.call("getRecordings", {"meetingID": "room"})
    assert record_ids(reply) == ["rec-2"]
    assert reply.field("recordings/recording/metadata/presenter") == "joe"
    # Still the integration's to change, with no server to ask.
    published = await lb.call("publishRecordings", {"recordID": "rec-2", "publish": "false"})
    assert published.field("returncode") == "SUCCESS"
    assert record_ids(await lb.call("getRecordings", {"state": "unpublished"})) == ["rec-2"]
    assert (await lb.call("deleteRecordings", {"recordID": "rec-2"})).field("deleted") == "true"
    assert record_ids(await lb.call("getRecordings")) == []


async def test_a_change_made_while_the_origin_is_down_is_pushed_when_it_returns(lb, sim):
    sim.add_recording("bbb1", "room", "rec-1")
    await synced(lb)
    await sim.fault("bbb1", "refuse")
    await lb.poll(rounds=3)
    assert (await lb.call("publishRecordings", {"recordID": "rec-1", "publish": "false"})).field("published") == "false"
    assert (await lb.call("updateRecordings", {"recordID": "rec-1", "meta_category": "archive"})).field("updated") == "true"
    assert sim.server("bbb1").recordings["rec-1"].state == "published"  # it could not be told
    await sim.fault("bbb1", "ok")
    await lb.poll(rounds=3)
    await synced(lb)  # the sync reads the server's stale copy: the index's change stands, and is pushed
    server_copy = sim.server("bbb1").recordings["rec-1"]
    assert server_copy.state == "unpublished" and server_copy.metadata["category"] == "archive"
    reply = await lb.call("getRecordings", {"state": "unpublished"})
    assert record_ids(reply) == ["rec-1"] and reply.field("recordings/recording/metadata/category") == "archive"
    assert lb.lb.recordings.index.get("rec-1")["pending"] == {}


async def test_the_sync_takes_changes_made_on_the_server_itself(lb, sim):
    sim.add_recording("bbb1", "room", "rec-1", state="processing", published=False)
    await synced(lb)
    assert record_ids(await lb.call("getRecordings", {"state": "processing"})) == ["rec-1"]
    sim.server("bbb1").recordings["rec-1"].state = "published"
    await synced(lb)
    assert record_ids(await lb.call("getRecordings")) == ["rec-1"]


async def test_a_change_reaches_a_live_origin_at_once(lb, sim):
    sim.add_recording("bbb3", "room", "rec-3")
    await synced(lb)
    await lb.call("deleteRecordings", {"recordID": "rec-3"})
    assert sim.server("bbb3").recordings["rec-3"].state == "deleted"
    assert lb.lb.recordings.index.get("rec-3")["pending"] == {}


async def test_a_recording_not_yet_synced_is_found_for_an_action(lb, sim):
    sim.add_recording("bbb4", "room", "rec-4")
    assert (await lb.call("publishRecordings", {"recordID": "rec-4", "publish": "false"})).field("published") == "false"
    assert sim.server("bbb4").recordings["rec-4"].state == "unpublished"
    assert (await lb.call("deleteRecordings", {"recordID": "nope"})).field("messageKey") == "notFound"


# --- listing -------------------------------------------------------------------------------------------


async def test_deleted_recordings_are_listed_only_for_state_deleted_and_leave_after_retention(lb, sim):
    sim.add_recording("bbb1", "room", "rec-1")
    await synced(lb)
    await lb.call("deleteRecordings", {"recordID": "rec-1"})
    assert record_ids(await lb.call("getRecordings", {"state": "any"})) == []
    assert record_ids(await lb.call("getRecordings", {"state": "deleted"})) == ["rec-1"]
    assert lb.lb.recordings.index.counts()["deleted"] == 1 and lb.lb.recordings.index.counts()["published"] == 0
    assert (await lb.call("publishRecordings", {"recordID": "rec-1", "publish": "true"})).field("messageKey") == "notFound"
    index = lb.lb.recordings.index
    assert await index.purge(now=int(time.time() * 1000) + 29 * DAY_MS) == []
    assert [d["record_id"] for d in await index.purge(now=int(time.time() * 1000) + 31 * DAY_MS)] == ["rec-1"]
    assert record_ids(await lb.call("getRecordings", {"state": "deleted"})) == []
    assert lb.lb.recordings.index.counts()["deleted"] == 0


async def test_each_integration_sees_its_own_newest_first_and_paged(lb_factory, sim):
    lb = await lb_factory(integrations=[{"name": "moodle", "secret": "moodle-secret"}])
    for i in range(5):
        sim.add_recording("bbb1", "room", f"m-{i}", meta={"mconflb-institution": "moodle"}, start_time=1000 + i)
    sim.add_recording("bbb2", "room", "default-1", start_time=5000)
    await synced(lb)
    mine = await lb.call("getRecordings", {"meetingID": "room"}, secret="moodle-secret")
    assert record_ids(mine) == ["m-4", "m-3", "m-2", "m-1", "m-0"]
    page = await lb.call("getRecordings", {"offset": "1", "limit": "2"}, secret="moodle-secret")
    assert record_ids(page) == ["m-3", "m-2"] and page.field("totalElements") == "5"
    assert record_ids(await lb.call("getRecordings", {"meetingID": "room"})) == ["default-1"]
    # Another integration's recording is not found, not changed, not listed by ID.
    assert (await lb.call("deleteRecordings", {"recordID": "m-1"})).field("messageKey") == "notFound"
    assert record_ids(await lb.call("getRecordings", {"recordID": "m-1"})) == []


async def test_meta_filters_must_all_match(lb, sim):
    sim.add_recording("bbb1", "a", "r-1", meta={"presenter": "joe", "category": "education"})
    sim.add_recording("bbb1", "b", "r-2", meta={"presenter": "joe", "category": "sports"})
    await synced(lb)
    reply = await lb.call("getRecordings", {"meta_presenter": "joe", "meta_category": "education"})
    assert record_ids(reply) == ["r-1"]


def test_a_meeting_filter_is_a_lookup_not_a_scan() -> None:
    """100 000 indexed recordings: a meetingID filter costs what it returns (see scripts/bench for figures)."""
    from lb_core.pool import Pool
    from lb_core.recording_index import RecordingIndex
    from lb_core.store_memory import MemoryStore

    index = RecordingIndex(MemoryStore(), Pool([]))
    for i in range(100_000):
        index._keep({"record_id": f"r-{i}", "meeting_id": f"m-{i % 20_000}", "integration": "default",
                     "state": "published", "start_time": i, "metadata": {}})
    started = time.perf_counter()
    for _ in range(100):
        found, total = index.query("default", Query(meeting_ids=["m-42"]))
    per_query_ms = (time.perf_counter() - started) * 10
    assert [d["record_id"] for d in found] == ["r-80042", "r-60042", "r-40042", "r-20042", "r-42"] and total == 5
    assert per_query_ms < 5


# --- the recording server ------------------------------------------------------------------------------


async def test_forwarded_creates_name_the_recording_server(lb_factory, sim):
    lb = await lb_factory(recordings={"server": {"id": "rec-1", "url": "https://rec.example.org/", "key": "pub-key"}})
    await lb.call("create", {"meetingID": "room", "name": "Room", "record": "true"})
    holder = sim.server_of("room")
    meta = sim.server(holder).meetings["room"].metadata
    assert meta["mconflb-rec-server"] == "rec-1"
    assert meta["mconflb-rec-server-url"] == "https://rec.example.org/"
    assert meta["mconflb-rec-server-key"] == "pub-key"


def token(server: str, secret: str, exp_in: float = 300, **claims: Any) -> str:
    return jwt.encode({"sub": server, "exp": int(time.time() + exp_in), **claims}, secret, algorithm="HS256")


def archive_of(published: Path, record_id: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(published / "presentation" / record_id, arcname=f"presentation/{record_id}")
    return buffer.getvalue()


@pytest.fixture
async def recording_lb(lb_factory, sim, tmp_path):  # type: ignore[no-untyped-def]
    for server in sim.cluster:
        server.spec.published_dir = str(tmp_path / "published" / server.name)
    lb = await lb_factory(recordings={"storage": str(tmp_path / "storage")},
                          callbacks={"allowed_networks": ["127.0.0.0/8"]})
    return lb


async def upload(lb, data: bytes, bearer: str):  # type: ignore[no-untyped-def]
    return await lb.http("/bigbluebutton/lb/recordings", method="POST", data=data,
                         headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/gzip"})


async def test_an_uploaded_recording_is_listed_played_back_and_outlives_its_server(recording_lb, sim, tmp_path):
    lb = recording_lb
    created = await lb.call("create", {"meetingID": "room", "name": "Room", "record": "true"})
    assert created.field("returncode") == "SUCCESS"
    holder = sim.server_of("room")
    internal = created.field("internalMeetingID")
    await sim.end(holder, "room")
    data = archive_of(tmp_path / "published" / holder, internal)
    reply = await upload(lb, data, token(holder, sim.server(holder).secret))
    assert (reply.status, reply.field("messageKey")) == (200, "imported"), reply.text
    listed = await lb.call("getRecordings", {"meetingID": "room"})
    url = listed.field("recordings/recording/playback/format/url")
    assert url == f"{PUBLIC_URL}/recordings/presentation/{internal}/"
    page = await lb.http(url)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html") and internal.encode() in page.body
    video = await lb.http(url + "video/webcams.webm", headers={"Range": "bytes=100-199"})
    source = (tmp_path / "published" / holder / "presentation" / internal / "video" / "webcams.webm").read_bytes()
    assert video.status == 206 and video.body == source[100:200]
    assert video.headers["Content-Range"] == f"bytes 100-199/{len(source)}"
    assert video.headers["Content-Type"] == "video/webm"
    assert (await lb.http(url + "../../../lb.json")).status == 404
    assert (await lb.http(url + "video/webcams.webm", method="POST")).status == 405
    # The server goes: the recording stays listed, playable, publishable, deletable.
    await lb.lb.server_controls.remove_server(holder)
    assert record_ids(await lb.call("getRecordings", {"meetingID": "room"})) == [internal]
    assert (await lb.http(url)).status == 200
    await lb.call("publishRecordings", {"recordID": internal, "publish": "false"})
    assert (await lb.http(url)).status == 404  # unpublished: not served
    # ... nor where a web server (the README's nginx location) would find it.
    storage = tmp_path / "storage"
    assert not (storage / internal).exists() and (storage / ".unpublished" / internal / "presentation").is_dir()
    await lb.call("publishRecordings", {"recordID": internal, "publish": "true"})
    assert (await lb.http(url)).status == 200
    assert (storage / internal / "presentation" / "metadata.xml").is_file()
    # updateRecordings changes the stored copy's metadata.xml too (an empty value removes a key).
    await lb.call("updateRecordings", {"recordID": internal, "meta_category": "archive", "meta_topic": "maths"})
    await lb.call("updateRecordings", {"recordID": internal, "meta_topic": ""})
    stored = (storage / internal / "presentation" / "metadata.xml").read_text()
    assert "<category>archive</category>" in stored and "<topic>" not in stored
    assert (await lb.call("deleteRecordings", {"recordID": internal})).field("deleted") == "true"
    assert (await lb.http(url)).status == 404
    assert not (tmp_path / "storage" / internal).exists()


async def test_uploads_with_a_bad_token_are_refused_and_leave_nothing(recording_lb, sim, tmp_path):
    lb = recording_lb
    sim.add_recording("bbb1", "room", "rec-1")
    data = archive_of(tmp_path / "published" / "bbb1", "rec-1")
    forged = token("bbb1", "not-the-secret")
    expired = token("bbb1", sim.server("bbb1").secret, exp_in=-60)
    too_long = token("bbb1", sim.server("bbb1").secret, exp_in=3600)
    another = token("bbb1", sim.server("bbb2").secret)  # bbb2's secret, claiming to be bbb1
    unknown = token("bbb9", "whatever")
    none_alg = jwt.encode({"sub": "bbb1", "exp": int(time.time() + 60)}, None, algorithm="none")  # type: ignore[arg-type]
    for bearer in (forged, expired, too_long, another, unknown, none_alg, "garbage"):
        reply = await upload(lb, data, bearer)
        assert reply.status == 401 and reply.field("returncode") == "FAILED", (bearer, reply.text)
    no_header = await lb.http("/bigbluebutton/lb/recordings", method="POST", data=data)
    assert no_header.status == 401
    assert record_ids(await lb.call("getRecordings", {"state": "any"})) == []
    storage = tmp_path / "storage"
    assert not storage.exists() or [p.name for p in storage.iterdir() if not p.name.startswith(".")] == []
    spool = storage / ".spool"
    assert not spool.exists() or list(spool.iterdir()) == []


async def test_a_server_cannot_upload_another_servers_meeting(recording_lb, sim, tmp_path):
    lb = recording_lb
    created = await lb.call("create", {"meetingID": "room", "name": "Room", "record": "true"})
    holder = sim.server_of("room")
    other = next(s.name for s in sim.cluster if s.name != holder)
    await sim.end(holder, "room")
    data = archive_of(tmp_path / "published" / holder, created.field("internalMeetingID"))
    reply = await upload(lb, data, token(other, sim.server(other).secret))
    assert reply.status == 422 and "ran on" in reply.field("message")
    assert not (tmp_path / "storage" / created.field("internalMeetingID")).exists()


async def test_a_hostile_upload_is_refused_with_its_reason(recording_lb, sim, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("presentation/rec-1/../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    reply = await upload(recording_lb, buffer.getvalue(), token("bbb1", sim.server("bbb1").secret))
    assert reply.status == 422 and "'..'" in reply.field("message")
    truncated = archive_of(Path(sim.server("bbb1").spec.published_dir or ""), sim.server("bbb1").add_recording("r", "rec-2").record_id)
    reply = await upload(recording_lb, truncated[: len(truncated) // 2], token("bbb1", sim.server("bbb1").secret))
    assert reply.status == 422
    assert record_ids(await recording_lb.call("getRecordings", {"state": "any"})) == []
    assert [p.name for p in (tmp_path / "storage").iterdir() if not p.name.startswith(".")] == []


async def test_recording_ready_fires_after_the_import_signed_for_the_integration(recording_lb, sim, tmp_path):
    from aiohttp import web

    received: list[str] = []

    async def ready(request: web.Request) -> web.Response:
        received.append((await request.post())["signed_parameters"])  # type: ignore[arg-type]
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ready", ready)
    async with serving(app) as port:
        lb = recording_lb
        for server in sim.cluster:
            server.spec.recording_ready_delay = 3600  # BBB's own callback comes late: the import's is first
        created = await lb.call("create", {"meetingID": "room", "name": "Room", "record": "true",
                                           "meta_bbb-recording-ready-url": f"http://127.0.0.1:{port}/ready"})
        holder = sim.server_of("room")
        internal = created.field("internalMeetingID")
        await sim.end(holder, "room")
        reply = await upload(lb, archive_of(tmp_path / "published" / holder, internal),
                             token(holder, sim.server(holder).secret))
        assert reply.status == 200
        from tests.core.conftest import until
        await until(lambda: received, what="the recording-ready callback")
        payload = jwt.decode(received[0], lb.secret, algorithms=["HS256"])
        assert payload == {"meeting_id": "room", "record_id": internal}


async def test_the_sync_pages_through_a_large_server_and_stops_when_pagination_is_ignored(lb, sim, monkeypatch):
    for i in range(250):
        sim.add_recording("bbb1", f"room-{i % 10}", f"rec-{i:03d}")
    assert await lb.lb.recording_sync.sync_server(lb.lb.pool.get("bbb1")) == 250
    assert len(lb.lb.recordings.index) == 250
    # A server that ignores offset/limit and holds exactly one page: read once, not forever.
    server = sim.server("bbb2")
    for i in range(100):
        sim.add_recording("bbb2", "room-x", f"old-{i:03d}")
    import dataclasses

    import bbbsim

    original = bbbsim._CALLS["getRecordings"]
    asked: list[str] = []

    async def no_pagination(self, call):  # type: ignore[no-untyped-def]
        if self is server:
            asked.append(call.params.pop("offset", ""))
            call.params.pop("limit", None)
        return await original.handler(self, call)

    monkeypatch.setitem(bbbsim._CALLS, "getRecordings", dataclasses.replace(original, handler=no_pagination))
    assert await lb.lb.recording_sync.sync_server(lb.lb.pool.get("bbb2")) == 100
    assert asked == ["0", "100"] and len(lb.lb.recordings.index) == 350


async def test_a_recording_asked_for_by_id_is_found_before_the_next_sync(lb, sim):
    sim.add_recording("bbb5", "room", "fresh-1")
    assert record_ids(await lb.call("getRecordings", {"recordID": "fresh-1"})) == ["fresh-1"]
    assert lb.lb.recordings.index.get("fresh-1")["server"] == "bbb5"


async def test_a_recording_ready_callback_syncs_its_server_at_once(lb_factory, sim):
    from tests.core.conftest import until

    lb = await lb_factory(callbacks={"allowed_networks": ["127.0.0.0/8"]})
    await lb.call("create", {"meetingID": "room", "name": "Room", "record": "true",
                             "meta_bbb-recording-ready-url": "http://127.0.0.1:9/ready"})
    holder = sim.server_of("room")
    server = sim.server(holder)
    server.spec.recording_ready_delay = 0
    await sim.end(holder, "room")  # the simulator makes the recording and calls the LB's recording-ready URL
    sent = await until(lambda: [c for c in server.callbacks if c["kind"] == "recording_ready"], what="the callback")
    assert record_ids_sync(lb) == []
    from urllib.parse import urlencode
    reply = await lb.http(sent[0]["url"], method="POST", data=urlencode(sent[0]["data"]).encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 200, reply.text
    await until(lambda: record_ids_sync(lb) == ["room"], what="the recording in the index")


def record_ids_sync(lb) -> list[str]:  # type: ignore[no-untyped-def]
    return [d["meeting_id"] for d in lb.lb.recordings.index.documents()]


async def test_an_imported_recording_keeps_the_state_its_metadata_says(recording_lb, sim, tmp_path):
    sim.server("bbb1").add_recording("room", "rec-u", state="unpublished")
    reply = await upload(recording_lb, archive_of(tmp_path / "published" / "bbb1", "rec-u"),
                         token("bbb1", sim.server("bbb1").secret))
    assert reply.status == 200, reply.text
    listed = await recording_lb.call("getRecordings", {"state": "unpublished"})
    assert record_ids(listed) == ["rec-u"]
    assert (await recording_lb.http(listed.field("recordings/recording/playback/format/url"))).status == 404
    storage = tmp_path / "storage"
    assert not (storage / "rec-u").exists() and (storage / ".unpublished" / "rec-u").is_dir()
