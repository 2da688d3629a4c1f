"""Gateway rules that are functions: ID shapes, routing parameters, methods, caches, end confirmation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lb_core import bbbxml, config, lifecycle, recording_index
from lb_core.api import Call
from lb_core.backend import BackendError, BackendReply
from lb_core.event_log import EventLog
from lb_core.handlers import CALLS, allowed_methods
from lb_core.handlers.context import Context, Services, is_internal_meeting_id
from lb_core.integrations import Integrations
from lb_core.lru import LruCache
from lb_core.meeting_creates import CreateCoordinator
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.pool import Pool
from lb_core.query import RawQuery
from lb_core.service import assemble
from lb_core.store_tinydb import TinyDbStore
from lb_core.trace import Trace
from lb_core.verify import conflicting_param

INTERNAL = "183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1511788233925"


@pytest.mark.parametrize("meeting_id", [INTERNAL, INTERNAL.upper(), f" {INTERNAL}\n", "a" * 40 + "-1"])
def test_internal_meeting_id_shapes(meeting_id: str) -> None:
    assert is_internal_meeting_id(meeting_id)


@pytest.mark.parametrize("meeting_id", ["room", INTERNAL[:-14], "g" * 40 + "-1511788233925", INTERNAL + "x",
                                        "x" + INTERNAL, INTERNAL.replace("-", "_")])
def test_ordinary_meeting_ids(meeting_id: str) -> None:
    assert not is_internal_meeting_id(meeting_id)


def test_conflicting_routing_parameters() -> None:
    assert conflicting_param([("meetingID", "a"), ("name", "x"), ("meetingID", "b")]) == "meetingID"
    assert conflicting_param([("role", "VIEWER"), ("role", "MODERATOR")]) == "role"
    assert conflicting_param([("meetingID", "a"), ("meetingID", "a"), ("record", "true")]) is None
    assert conflicting_param([("meta_x", "1"), ("meta_x", "2")]) is None  # not a routing parameter


def test_get_only_calls() -> None:
    for name in ("join", "publishRecordings", "deleteRecordings"):
        assert "POST" not in allowed_methods(name) and "GET" in allowed_methods(name)
    assert {"GET", "POST"} <= allowed_methods("create")


def test_lru_cache_is_bounded_and_keeps_the_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(3)
    for i in range(10):
        cache[f"k{i}"] = i
    assert len(cache) == 3 and cache.get("k0") is None
    assert cache.get("k7") == 7  # now the most recent
    cache["k10"] = 10
    assert "k7" in cache and "k8" not in cache
    assert cache.pop("k7") == 7 and cache.pop("k7") is None


# --- a gateway over a scripted backend ---------------------------------------------------------------------


class ScriptedBackend:
    """Answers each call with the XML the test gives (or raises), and records what was asked."""

    def __init__(self) -> None:
        self.answers: dict[str, bytes | Exception] = {}
        self.asked: list[tuple[str, str]] = []

    async def call(self, server: Any, name: str, query: str, **_: Any) -> BackendReply:
        self.asked.append((name, query))
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return BackendReply(server.name, 200, {"Content-Type": "text/xml"}, answer, 1.0, "")


class Parts:
    """The handlers' services over a scripted backend (``service.assemble``, as the LB builds them)."""

    def __init__(self, services: Services, integrations: Integrations) -> None:
        self.services = services
        self.integrations = integrations
        self.meetings = services.meetings
        self.lifecycle = services.lifecycle

    def context(self, call: Call) -> Context:
        return Context(call, Trace(call=call.name), CALLS[call.name], self.services)


async def make_parts(tmp_path: Path, backend: ScriptedBackend) -> Parts:
    cfg = config.parse({"secret": "lb-secret", "store": {"path": str(tmp_path / "lb.json")},
                        "servers": [{"name": "bbb1", "url": "http://127.0.0.1:1/bigbluebutton/", "secret": "s1"}]})
    store = TinyDbStore(str(tmp_path / "lb.json"))
    await store.open()
    integrations = Integrations(cfg.integrations)
    api = assemble(cfg, Pool(cfg.servers), MeetingRegistry(store), EventLog(store), backend,  # type: ignore[arg-type]
                   integrations, "guid-1")
    return Parts(api.services, integrations)


def test_learned_recordings_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What creates teach the index (internal meeting ID -> server, owner) is bounded; the index itself
    lives in the store (tests/core/test_recordings_index.py)."""
    monkeypatch.setattr(recording_index, "INTERNAL_IDS_MAX", 10)
    asyncio.run(_learned_recordings_are_bounded(tmp_path))


async def _learned_recordings_are_bounded(tmp_path: Path) -> None:
    gw = await make_parts(tmp_path, ScriptedBackend())
    for i in range(50):
        gw.services.recordings.learn(f"internal-{i}", "bbb1", "default")
    assert len(gw.services.recordings._created) == 10


def _meeting_info(end_time: str, institution: str = "default") -> bytes:
    return bbbxml.success([("meetingID", "room"), ("internalMeetingID", "i-1"), ("endTime", end_time),
                           ("metadata", [("mconflb-institution", institution)])])


@pytest.mark.parametrize(("answer", "ended"), [
    (_meeting_info("0"), False),  # still there: a forged callback
    (BackendError("bbb1", "refused"), False),  # cannot be asked: not proof either
    (bbbxml.failed("notFound", "gone"), True),
    (_meeting_info("1700000000000"), True),  # ended, not yet removed
    (_meeting_info("0", institution="other"), True),  # the ID now is someone else's: ours ended
])
def test_an_end_callback_is_believed_only_when_the_server_confirms(tmp_path: Path, answer: Any, ended: bool) -> None:
    asyncio.run(_end_confirmation(tmp_path, answer, ended))


async def _end_confirmation(tmp_path: Path, answer: Any, ended: bool) -> None:
    backend = ScriptedBackend()
    backend.answers["getMeetingInfo"] = answer
    gw = await make_parts(tmp_path, backend)
    await gw.meetings.save(MeetingRecord("default", "room", "bbb1", 1, internal_id="i-1"))
    assert await gw.lifecycle.meeting_ended("default", "room", "bbb1") is ended
    assert (gw.meetings.get("default", "room") is None) is ended
    assert backend.asked == [("getMeetingInfo", "meetingID=room")]


def test_creates_of_one_backend_id_on_one_server_run_one_at_a_time(tmp_path: Path) -> None:
    creates = CreateCoordinator(MeetingRegistry(TinyDbStore(str(tmp_path / "lb.json"))))
    order: list[str] = []

    async def create(who: str, server: str) -> None:
        async with creates.backend_lock(server, "room"):
            order.append(f"{who}+")
            await asyncio.sleep(0.01)
            order.append(f"{who}-")

    async def main() -> None:
        await asyncio.gather(create("a", "bbb1"), create("b", "bbb1"), create("c", "bbb2"))

    asyncio.run(main())
    assert order.index("a-") < order.index("b+")  # one after the other on bbb1
    assert order.index("c+") < order.index("a-")  # another server is not held up
    assert creates._backend_locks == {}  # nothing kept once no one waits


def test_the_is_meeting_running_cache_is_bounded_and_forgets_ended_meetings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RUNNING_CACHE_MAX", 5)
    asyncio.run(_running_cache(tmp_path))


async def _running_cache(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    backend.answers["isMeetingRunning"] = bbbxml.success([("running", False)])
    gw = await make_parts(tmp_path, backend)
    default = gw.integrations["default"]
    records = [MeetingRecord("default", f"room-{i}", "bbb1", 1) for i in range(20)]
    for record in records:
        await gw.meetings.save(record)
        query = RawQuery.parse(f"meetingID={record.meeting_id}")
        call = Call("isMeetingRunning", "GET", query, query.pairs(), None, "", default, "")
        await CALLS["isMeetingRunning"].handler(gw.context(call))
    assert len(gw.lifecycle.running) == 5
    assert records[-1].key in gw.lifecycle.running
    await gw.lifecycle.forget(records[-1])
    assert records[-1].key not in gw.lifecycle.running
