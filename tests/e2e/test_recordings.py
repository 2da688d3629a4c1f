"""Recordings that outlive their servers, end to end: a real ``bbb-lb run``, a simulator that publishes
real recording directories, the real post-publish script and the real CLI."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from tests.conftest import LB, REPO, Simulator, http, make_lb, raw_upload, start_simulator_for, wait_for

TOKEN = "r" * 24


@pytest.fixture
def publishing_sim(tmp_path: Path) -> Any:
    simulator = start_simulator_for([
        {"name": f"bbb{i}", "url": "http://127.0.0.1:0/bigbluebutton/", "secret": f"secret-{i}",
         "published_dir": str(tmp_path / "published" / f"bbb{i}")} for i in (1, 2)])
    yield simulator
    simulator.process.terminate()
    simulator.process.wait(10)


@pytest.fixture
def rec_lb(tmp_path: Path, publishing_sim: Simulator) -> Any:
    servers = [{k: v for k, v in s.items() if k != "published_dir"} for s in publishing_sim.servers]
    lb = make_lb(tmp_path, publishing_sim, servers=[], recordings={"storage": str(tmp_path / "storage"), "sync_interval_s": 0.3},
                 admin={"port": 0, "token": TOKEN})
    lb.config["servers"] = servers
    lb.start()
    yield lb
    if lb.process is not None:
        lb.stop()


def record_ids(lb: LB, **params: str) -> list[str]:
    reply = lb.call("getRecordings", params)
    return [r.findtext("recordID") or "" for r in reply.xml().iterfind("recordings/recording")]


def cli(lb: LB, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "addons.cli", *args, "--config", str(lb.config_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def post_publish(lb: LB, tmp_path: Path, server: str, secret: str, record_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bbb-post-publish"), "--record-id", record_id, "--lb-url", lb.url,
         "--server", server, "--secret", secret, "--published-dir", str(tmp_path / "published" / server),
         "--attempts", "2", "--retry-delay", "0.1"], capture_output=True, text=True, timeout=60)


def test_a_recording_is_shipped_listed_played_and_outlives_its_server(rec_lb: LB, publishing_sim: Simulator,
                                                                      tmp_path: Path) -> None:
    lb = rec_lb
    created = lb.call("create", {"meetingID": "lecture", "name": "Lecture", "record": "true"})
    assert created.field("returncode") == "SUCCESS"
    internal = created.field("internalMeetingID")
    holder = next(s["name"] for s in publishing_sim.control("/servers") if "lecture" in s["meetings"])
    secret = next(s["secret"] for s in publishing_sim.servers if s["name"] == holder)
    publishing_sim.control(f"/servers/{holder}/meetings/lecture/end", {})
    wait_for(lambda: (tmp_path / "published" / holder / "presentation" / internal / "metadata.xml").is_file(),
             what="the simulator's published recording")
    shipped = post_publish(lb, tmp_path, holder, secret, internal)
    assert shipped.returncode == 0, (shipped.stdout, shipped.stderr)
    assert "imported" in shipped.stdout
    reply = lb.call("getRecordings", {"meetingID": "lecture"})
    url = reply.field("recordings/recording/playback/format/url")
    assert url == f"{lb.url}/recordings/presentation/{internal}/"
    page = http(url)
    assert page.status == 200 and internal in page.text
    video_url = url + "video/webcams.webm"
    video = http(video_url, headers={"Range": "bytes=1000-1999"})
    source = (tmp_path / "published" / holder / "presentation" / internal / "video" / "webcams.webm").read_bytes()
    assert video.status == 206 and video.body == source[1000:2000] and video.headers["Content-Type"] == "video/webm"
    # The server is removed: the recording stays listed, playable, publishable and deletable.
    cli(lb, "servers", "remove", holder)
    wait_for(lambda: "recordings" in http(f"http://127.0.0.1:{lb.bound['admin']}/api/dashboard",
                                          headers={"Authorization": f"Bearer {TOKEN}"}).text, what="dashboard")
    assert record_ids(lb, meetingID="lecture") == [internal]
    assert http(url).status == 200
    listed = cli(lb, "recordings", "list", "--json")
    assert json.loads(listed.stdout)[0]["record_id"] == internal
    cli(lb, "recordings", "unpublish", internal)
    assert http(url).status == 404
    assert lb.call("publishRecordings", {"recordID": internal, "publish": "true"}).field("published") == "true"
    assert http(url).status == 200
    assert lb.call("deleteRecordings", {"recordID": internal}).field("deleted") == "true"
    assert record_ids(lb, meetingID="lecture") == [] and record_ids(lb, state="deleted") == [internal]
    assert http(url).status == 404
    dashboard = json.loads(http(f"http://127.0.0.1:{lb.bound['admin']}/api/dashboard",
                                headers={"Authorization": f"Bearer {TOKEN}"}).body)
    assert dashboard["recordings"]["counts"]["deleted"] == 1
    assert dashboard["recordings"]["last_imports"][0]["result"] == "imported"


def test_a_synced_recording_stays_listed_while_its_server_is_down(rec_lb: LB, publishing_sim: Simulator) -> None:
    lb = rec_lb
    publishing_sim.control("/servers/bbb2/recordings", {"meetingID": "seminar", "recordID": "rec-sync-1"})
    wait_for(lambda: record_ids(lb, meetingID="seminar") == ["rec-sync-1"], what="the sync")
    publishing_sim.fault("bbb2", "refuse")
    try:
        # Until the poller has seen bbb2 down (2 failed polls), the syncs ran with it unreachable too.
        wait_for(lambda: lb.call("getServers").xml().findtext("servers/server[name='bbb2']/status") in ("3", "4"),
                 what="bbb2 seen down")
        assert record_ids(lb, meetingID="seminar") == ["rec-sync-1"]
    finally:
        publishing_sim.fault("bbb2", "ok")


def test_hostile_uploads_are_refused_and_leave_nothing(rec_lb: LB, publishing_sim: Simulator, tmp_path: Path) -> None:
    lb = rec_lb
    publishing_sim.control("/servers/bbb1/recordings", {"meetingID": "x", "recordID": "rec-h"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "published" / "bbb1" / "presentation" / "rec-h", arcname="presentation/rec-h")
    good = buffer.getvalue()
    ok_token = jwt.encode({"sub": "bbb1", "exp": int(time.time()) + 300}, "secret-1", algorithm="HS256")
    forged = jwt.encode({"sub": "bbb1", "exp": int(time.time()) + 300}, "secret-2", algorithm="HS256")
    expired = jwt.encode({"sub": "bbb1", "exp": int(time.time()) - 60}, "secret-1", algorithm="HS256")
    for bearer in (forged, expired):
        answer = raw_upload(lb, {"Authorization": f"Bearer {bearer}"}, good)
        assert b" 401 " in answer.split(b"\r\n", 1)[0] and b"<returncode>FAILED</returncode>" in answer
    # A path traversal, answered with its reason.
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("presentation/rec-h/../../../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    answer = raw_upload(lb, {"Authorization": f"Bearer {ok_token}"}, evil.getvalue())
    assert b" 422 " in answer.split(b"\r\n", 1)[0] and b"is not allowed" in answer
    # A truncated upload: the client hangs up half-way; nothing is imported and the spool is emptied.
    raw_upload(lb, {"Authorization": f"Bearer {ok_token}"}, good, send_only=len(good) // 2)
    spool = tmp_path / "storage" / ".spool"
    wait_for(lambda: not spool.exists() or not list(spool.iterdir()), what="the spool file to go")
    stored = [p.name for p in (tmp_path / "storage").iterdir() if not p.name.startswith(".")] \
        if (tmp_path / "storage").exists() else []
    assert stored == []
    assert not (tmp_path / "escape").exists()
    # The same archive, whole and signed, is imported.
    answer = raw_upload(lb, {"Authorization": f"Bearer {ok_token}"}, good)
    assert b" 200 " in answer.split(b"\r\n", 1)[0], answer
    assert urlsplit(lb.url).port == lb.port


def test_spool_import_reports_each_archive_and_sets_refused_ones_aside(rec_lb: LB, publishing_sim: Simulator,
                                                                       tmp_path: Path) -> None:
    lb = rec_lb
    publishing_sim.control("/servers/bbb1/recordings", {"meetingID": "spool", "recordID": "rec-spool"})
    spool = tmp_path / "spool"
    spool.mkdir()
    with tarfile.open(spool / "good.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "published" / "bbb1" / "presentation" / "rec-spool", arcname="presentation/rec-spool")
    with tarfile.open(spool / "bad.tar", "w") as tar:
        info = tarfile.TarInfo("presentation/rec-x/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/shadow"
        tar.addfile(info)
    done = cli(lb, "recordings", "import", str(spool), check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "good.tar.gz: imported recording rec-spool" in done.stdout
    assert "bad.tar: refused: member 'presentation/rec-x/link': links are not allowed" in done.stdout
    assert not (spool / "good.tar.gz").exists() and (spool / "refused" / "bad.tar").exists()
    assert "links" in (spool / "refused" / "bad.tar.reason").read_text()
    shown = json.loads(cli(lb, "recordings", "show", "rec-spool").stdout)
    assert shown["stored_formats"] == ["presentation"] and shown["state"] == "published"
    assert http(f"{lb.url}/recordings/presentation/rec-spool/").status == 200


def test_watch_mode_imports_archives_as_they_appear(rec_lb: LB, publishing_sim: Simulator, tmp_path: Path) -> None:
    lb = rec_lb
    publishing_sim.control("/servers/bbb2/recordings", {"meetingID": "watched", "recordID": "rec-watch"})
    spool = tmp_path / "watched-spool"
    spool.mkdir()
    watcher = subprocess.Popen([sys.executable, "-m", "addons.cli", "recordings", "import", str(spool), "--watch",
                                "--interval", "0.2", "--config", str(lb.config_path)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        partial = spool / "rec-watch.tar.gz.part"
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(tmp_path / "published" / "bbb2" / "presentation" / "rec-watch", arcname="presentation/rec-watch")
        partial.rename(spool / "rec-watch.tar.gz")  # as a spool writer should: the name appears when complete
        wait_for(lambda: not (spool / "rec-watch.tar.gz").exists(), timeout=30, what="the watcher's import")
        shown = json.loads(cli(lb, "recordings", "show", "rec-watch").stdout)
        assert shown["stored_formats"] == ["presentation"] and shown["source"] == "import"
    finally:
        watcher.terminate()
        output = watcher.communicate(timeout=10)[0]
    assert "rec-watch.tar.gz: imported recording rec-watch" in output


def test_an_unauthorised_upload_gets_no_upload_time(tmp_path: Path, publishing_sim: Simulator) -> None:
    """Only a server's signed upload may take long to arrive; a refused one is cut off at the API calls' limit."""
    lb = make_lb(tmp_path, publishing_sim, servers=[], recordings={"storage": str(tmp_path / "storage")},
                 limits={"request_body_timeout_s": 1})
    lb.config["servers"] = [{k: v for k, v in s.items() if k != "published_dir"} for s in publishing_sim.servers]
    lb.start()
    try:
        forged = jwt.encode({"sub": "bbb1", "exp": int(time.time()) + 300}, "wrong", algorithm="HS256")
        with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as conn:
            conn.sendall(b"POST /bigbluebutton/lb/recordings HTTP/1.1\r\nHost: lb\r\nAuthorization: Bearer "
                         + forged.encode() + b"\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 1000)
            started = time.monotonic()
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            assert b" 401 " in data.split(b"\r\n", 1)[0]
            assert time.monotonic() - started < 8  # closed after ~1 s, not held for an hour
    finally:
        lb.stop()
