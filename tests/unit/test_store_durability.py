"""No crash loses a write: torn journal lines, failed writes, one process per store, private file modes."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from lb_core import durable_files as store_module
from lb_core.meetings import MeetingRecord, MeetingRegistry
from lb_core.store import StoreError, StoreLocked
from lb_core.store_tinydb import TinyDbStore


def crash(store: TinyDbStore) -> None:
    """As after kill -9: the kernel drops the store's lock; nothing more is written."""
    store._unlock()


async def opened(path: Path) -> TinyDbStore:
    store = TinyDbStore(str(path), event_flush_interval_s=3600)
    await store.open()
    return store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- torn lines ------------------------------------------------------------------------------


async def test_a_journal_line_cut_anywhere_is_skipped_and_the_store_opens(tmp_path, caplog):
    """Every cut of the last line, including inside a multi-byte character, loses that line only."""
    path = tmp_path / "lb.json"
    store = await opened(path)
    await store.put("meetings", "default kept", {"name": "Früh"})
    await store.put("meetings", "default torn", {"name": "Réunion 会议 ✓"})
    journal = Path(store.journal_path)
    crash(store)
    whole = journal.read_bytes()
    last_start = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    cuts = range(last_start + 1, len(whole) - 1)
    inside_a_character = [c for c in cuts if whole[c] & 0xC0 == 0x80]
    assert inside_a_character  # the cuts below do split multi-byte characters
    for cut in cuts:
        for leftover in tmp_path.glob("lb.json*"):
            leftover.unlink()
        journal.write_bytes(whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, "bbb_lb.store"):
            again = await opened(path)
        assert await again.all("meetings") == {"default kept": {"name": "Früh"}}, cut
        assert "skipped an incomplete line" in caplog.text
        await again.close()


# --- failed writes -----------------------------------------------------------------------------


async def test_a_failed_fsync_fails_the_call_and_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "lb.json"
    store = await opened(path)
    await store.put("meetings", "default a", {"v": 1})
    journal = Path(store.journal_path)
    size_before = journal.stat().st_size
    real_fsync = os.fsync

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StoreError):
        await store.put("meetings", "default a", {"v": 2})
    with pytest.raises(StoreError):
        await store.put("meetings", "default b", {"v": 1})
    # Memory and disk agree: neither change is visible, and nothing of them is in the journal.
    assert await store.get("meetings", "default a") == {"v": 1}
    assert await store.all("meetings") == {"default a": {"v": 1}}
    assert journal.stat().st_size == size_before
    monkeypatch.setattr(os, "fsync", real_fsync)
    await store.put("meetings", "default c", {"v": 1})
    crash(store)
    again = await opened(path)
    assert await again.all("meetings") == {"default a": {"v": 1}, "default c": {"v": 1}}
    await again.close()


async def test_a_torn_write_on_a_full_disk_is_cut_back_before_the_next_write(tmp_path, monkeypatch, caplog):
    path = tmp_path / "lb.json"
    store = await opened(path)
    await store.put("meetings", "default a", {"v": 1})
    real_write_all = store_module.write_all
    real_ftruncate = os.ftruncate

    def half_then_enospc(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])  # a torn fragment lands on the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def no_ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(store_module, "write_all", half_then_enospc)
    monkeypatch.setattr(os, "ftruncate", no_ftruncate)  # even cutting the fragment off fails this time
    with pytest.raises(StoreError, match="No space left"):
        await store.put("meetings", "default b", {"v": "é" * 50})
    assert await store.get("meetings", "default b") is None
    monkeypatch.setattr(store_module, "write_all", real_write_all)
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    await store.put("meetings", "default c", {"v": 3})
    crash(store)
    lines = Path(store.journal_path).read_bytes().split(b"\n")
    assert [json.loads(line)["k"] for line in lines if line] == ["default a", "default c"]
    with caplog.at_level(logging.WARNING, "bbb_lb.store"):
        again = await opened(path)
    assert "skipped" not in caplog.text
    assert await again.all("meetings") == {"default a": {"v": 1}, "default c": {"v": 3}}
    await again.close()


class FailingStore(TinyDbStore):
    fail = False

    async def put(self, table, key, doc):  # type: ignore[no-untyped-def]
        if self.fail:
            raise StoreError("store write failed: No space left on device")
        await super().put(table, key, doc)

    async def delete(self, table, key):  # type: ignore[no-untyped-def]
        if self.fail:
            raise StoreError("store write failed: No space left on device")
        await super().delete(table, key)


async def test_the_meeting_registry_keeps_nothing_a_failed_write_did_not_store(tmp_path):
    store = FailingStore(str(tmp_path / "lb.json"))
    await store.open()
    registry = MeetingRegistry(store)
    first = MeetingRecord("default", "room", "bbb1", 1, voice_bridge="70001")
    await registry.save(first)
    store.fail = True
    with pytest.raises(StoreError):
        await registry.save(MeetingRecord("default", "other", "bbb2", 2, voice_bridge="70002"))
    assert registry.get("default", "other") is None and len(registry) == 1
    assert not registry.voice_bridge_in_use("bbb2", "70002") and registry.holders_of("other") == set()
    with pytest.raises(StoreError):
        await registry.save(MeetingRecord("default", "room", "bbb3", 3, voice_bridge="70003"))
    assert registry.get("default", "room") == first and registry.holders_of("room") == {"bbb1"}
    with pytest.raises(StoreError):
        await registry.forget(first)
    assert registry.get("default", "room") == first and registry.voice_bridge_in_use("bbb1", "70001")
    store.fail = False
    await store.close()


# --- one process per store ------------------------------------------------------------------------


async def test_a_second_store_on_the_same_path_is_refused(tmp_path):
    path = tmp_path / "lb.json"
    first = await opened(path)
    second = TinyDbStore(str(path))
    with pytest.raises(StoreLocked, match=f"in use by another bbb-lb process \\(pid {os.getpid()}\\)"):
        await second.open()
    await first.close()
    third = await opened(path)  # closing releases the lock
    await third.close()


# --- duplicate events ------------------------------------------------------------------------------


async def test_a_failed_event_write_is_retried_without_duplicates(tmp_path, monkeypatch):
    store = await opened(tmp_path / "lb.json")
    store.append_events([{"p": "00000001", "n": i} for i in range(3)])
    store.append_events([{"p": "00000002", "n": 10}])
    await store.flush()
    real_write_all = store_module.write_all
    calls = {"n": 0}

    def fail_on_second_file(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first file of the batch is written whole, the second is torn
            os.write(fd, data[:5])
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_write_all(fd, data)

    store.append_events([{"p": "00000001", "n": 3}, {"p": "00000002", "n": 11}])
    monkeypatch.setattr(store_module, "write_all", fail_on_second_file)
    await store.flush()  # fails; the batch stays queued
    assert store.stats()["events_queued"] == 2
    assert [d["n"] for d in await store.read_events("00000001")] == [0, 1, 2, 3]  # queued ones included once
    monkeypatch.setattr(store_module, "write_all", real_write_all)
    await store.flush()
    crash(store)
    again = await opened(tmp_path / "lb.json")
    assert [d["n"] for d in await again.read_events("00000001")] == [0, 1, 2, 3]
    assert [d["n"] for d in await again.read_events("00000002")] == [10, 11]
    await again.close()


# --- file modes ------------------------------------------------------------------------------------


async def test_store_files_are_private(tmp_path):
    os.umask(0o022)
    path = tmp_path / "data" / "lb.json"
    store = await opened(path)
    await store.put("meetings", "default a", {"moderator_pw": "secret"})
    store.append_events([{"p": "00000001", "t": "create"}])
    await store.flush()
    store.COMPACT_AFTER_BYTES = 0
    await store.put("meetings", "default b", {"moderator_pw": "secret"})  # folds the journal into lb.json
    await store.close()
    assert mode(path.parent) == 0o700
    assert mode(Path(store.events_dir)) == 0o700
    files = [p for p in path.parent.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"lb.json", "lb.json.lock", "00000001.jsonl"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_captures_are_private(tmp_path):
    from addons.capture import Sink

    os.umask(0o022)
    sink = Sink(str(tmp_path / "flows" / "api.flows"), max_bytes=10, keep=2, mask=False)
    sink.open()
    sink.close()
    assert mode(tmp_path / "flows") == 0o700
    assert mode(tmp_path / "flows" / "api.flows") == 0o600


# --- the call that needed a failed write answers FAILED ----------------------------------------------


class ScriptedBackend:
    """A BBB server that creates every meeting it is asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def call(self, server, name: str, query: str, **_):  # type: ignore[no-untyped-def]
        from lb_core import bbbxml
        from lb_core.backend import BackendReply

        self.asked.append(name)
        body = bbbxml.success([("meetingID", "room"), ("internalMeetingID", "i-1"), ("voiceBridge", "70001"),
                               ("moderatorPW", "mp"), ("attendeePW", "ap")])
        return BackendReply(server.name, 200, {"Content-Type": "text/xml"}, body, 1.0, "")


async def test_a_create_whose_meeting_cannot_be_stored_answers_internal_error(tmp_path, monkeypatch):
    from lb_core import bbbxml, checksum, config
    from lb_core.api import Request
    from lb_core.event_log import EventLog
    from lb_core.integrations import Integrations
    from lb_core.pool import Pool, Status
    from lb_core.service import assemble

    cfg = config.parse({"secret": "lb-secret", "store": {"path": str(tmp_path / "lb.json")},
                        "servers": [{"name": "bbb1", "url": "http://127.0.0.1:1/bigbluebutton/", "secret": "s1"}]})
    store = await opened(tmp_path / "lb.json")
    pool = Pool(cfg.servers)
    for server in pool:
        server.status = Status.UP
    registry = MeetingRegistry(store)
    gateway = assemble(cfg, pool, registry, EventLog(store), ScriptedBackend(),  # type: ignore[arg-type]
                       Integrations(cfg.integrations), "guid-1").gateway

    def create() -> Request:
        query = checksum.sign("create", "meetingID=room&name=Room", "lb-secret", "sha256")
        return Request("GET", "/bigbluebutton/api/create", query, {}, b"", "127.0.0.1")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", broken_fsync)
    answer = (await gateway.handle(create())).answer
    root = bbbxml.parse(answer.body)
    assert (root.findtext("returncode"), root.findtext("messageKey")) == ("FAILED", "internalError")
    assert registry.get("default", "room") is None and await store.all("meetings") == {}
    monkeypatch.undo()
    answer = (await gateway.handle(create())).answer
    assert bbbxml.parse(answer.body).findtext("returncode") == "SUCCESS"
    assert registry.get("default", "room") is not None
    await store.close()
