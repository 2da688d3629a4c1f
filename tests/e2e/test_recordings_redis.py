"""Two ``bbb-lb run`` on one redis-server answer getRecordings as one LB: an import, a publish, an update
or a delete made through one instance is listed by the other at once (change notices, no sync)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LB, REPO, RedisServer, Simulator, http, wait_for
from tests.e2e.test_scaleout import ADMIN_TOKEN, redis_lb

sys.path.insert(0, str(REPO / "scripts"))
import bbbsim  # noqa: E402

SOON_S = 1.0  # "at once": a change notice, not the next sync (which is an hour away here)


@pytest.fixture
def rec_pair(tmp_path: Path, sim: Simulator, redis_server: RedisServer, redis_prefix: str):  # type: ignore[no-untyped-def]
    sim.reset()
    storage = tmp_path / "storage"  # shared, as an NFS mount would be
    lbs = [redis_lb(tmp_path, sim, redis_server, redis_prefix, name,
                    recordings={"storage": str(storage), "sync_interval_s": 3600}).start() for name in ("a", "b")]
    yield lbs
    for lb in lbs:
        if lb.process is not None:
            try:
                lb.stop()
            except subprocess.TimeoutExpired:
                lb.process.kill()
                lb.process.wait(10)


def archive(tmp_path: Path, record_id: str, meeting_id: str = "lecture") -> Path:
    recording = bbbsim.Recording(record_id=record_id, meeting_id=meeting_id, internal_meeting_id=record_id,
                                 name=meeting_id, playback_url="", start_time=int(time.time() * 1000),
                                 end_time=int(time.time() * 1000) + 60_000, metadata={"course": "math"})
    published = bbbsim.write_published(recording, tmp_path / "published")
    path = tmp_path / f"{record_id}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(published, arcname=f"presentation/{record_id}")
    return path


def admin_import(lb: LB, path: Path) -> dict[str, Any]:
    reply = http(f"http://127.0.0.1:{lb.bound['admin']}/api/recordings/import", method="POST",
                 data=json.dumps({"path": str(path)}).encode(),
                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    assert reply.status < 300, reply.text
    return json.loads(reply.body)


def listed(lb: LB, **params: str) -> dict[str, dict[str, Any]]:
    reply = lb.call("getRecordings", params)
    assert reply.field("returncode") == "SUCCESS", reply.text
    return {r.findtext("recordID") or "": {"state": r.findtext("state"), "course": r.findtext("metadata/course")}
            for r in reply.xml().iterfind("recordings/recording")}


def soon(predicate: Any, what: str) -> None:
    started = time.monotonic()
    wait_for(predicate, timeout=10, interval=0.02, what=what)
    assert time.monotonic() - started < SOON_S, f"{what} took {time.monotonic() - started:.2f} s"


def test_a_change_through_one_instance_is_listed_by_the_other_at_once(rec_pair, tmp_path) -> None:
    a, b = rec_pair
    assert listed(b, state="any") == {}  # b's lookups are loaded: what follows must reach them
    result = admin_import(a, archive(tmp_path, "rec-shared"))
    assert result.get("result") == "imported" or result.get("results", [{}])[0].get("result") == "imported", result
    soon(lambda: "rec-shared" in listed(b), "b to list the recording imported through a")
    assert listed(b)["rec-shared"] == {"state": "published", "course": "math"}
    # Unpublished on b: a shows it unpublished.
    assert b.call("publishRecordings", {"recordID": "rec-shared", "publish": "false"}).field("published") == "false"
    soon(lambda: listed(a).get("rec-shared", {}).get("state") == "unpublished", "a to see b's unpublish")
    # Published again and re-labelled on b, by a prefix of its ID on a.
    b.call("publishRecordings", {"recordID": "rec-shared", "publish": "true"})
    assert b.call("updateRecordings", {"recordID": "rec-shared", "meta_course": "physics"}).field("updated") == "true"
    soon(lambda: listed(a, recordID="rec-sh").get("rec-shared") == {"state": "published", "course": "physics"},
         "a to see b's publish and update")
    # Deleted on a: b stops listing it, and lists it under state=deleted.
    assert a.call("deleteRecordings", {"recordID": "rec-shared"}).field("deleted") == "true"
    soon(lambda: "rec-shared" not in listed(b), "b to stop listing the recording deleted through a")
    assert listed(b, state="deleted")["rec-shared"]["state"] == "deleted"
    assert b.call("publishRecordings", {"recordID": "rec-shared", "publish": "true"}).field("messageKey") == "notFound"


def test_an_operator_action_through_the_admin_api_reaches_every_instance(rec_pair, tmp_path) -> None:
    a, b = rec_pair
    admin_import(b, archive(tmp_path, "rec-op"))
    soon(lambda: "rec-op" in listed(a), "a to list the recording imported through b")
    reply = http(f"http://127.0.0.1:{a.bound['admin']}/api/recordings/rec-op/unpublish", method="POST",
                 data=b"{}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    assert reply.status == 200, reply.text
    soon(lambda: listed(b).get("rec-op", {}).get("state") == "unpublished", "b to see a's operator unpublish")
