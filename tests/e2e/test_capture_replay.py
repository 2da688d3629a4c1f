"""Capture a real client session with ``bbb-lb run --save`` and replay it against a second LB with another secret."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bigbluebutton_api_python import BigBlueButton
from mitmproxy import io

from tests.conftest import LB, REPO, Simulator, http, make_lb

API_CALLS = ["create", "join", "isMeetingRunning", "getMeetingInfo", "getMeetings", "end", "isMeetingRunning"]


def start(tmp_path: Path, sim: Simulator, name: str, extra_args: list[str], **overrides) -> LB:  # type: ignore[no-untyped-def]
    """An LB in its own directory (config, store, log), so several can run in one test."""
    home = tmp_path / name
    home.mkdir()
    lb = make_lb(home, sim, **overrides)
    lb.secret = lb.config["secret"]
    lb.extra_args = extra_args
    return lb.start()


def session(lb: LB, meeting_id: str) -> None:
    """What an LMS and a browser do, with the real client library; one call with a wrong checksum."""
    bbb = BigBlueButton(lb.api, lb.secret)
    created = bbb.create_meeting(meeting_id, params={"name": "Capture me", "attendeePW": "ap-pass",
                                                     "moderatorPW": "mp-pass"})
    assert created.get_field("returncode") == "SUCCESS"
    join = http(bbb.get_join_meeting_url("Alice", meeting_id, "mp-pass", params={}))
    assert join.status == 302 and "password=mp-pass" in join.headers["Location"]
    assert http(join.headers["Location"]).status == 302  # the browser arrives on the BBB server
    assert bbb.is_meeting_running(meeting_id).get_field("running") == "true"
    assert bbb.get_meeting_info(meeting_id).get_field("meetingID") == meeting_id
    assert bbb.get_meetings().get_field("returncode") == "SUCCESS"
    assert bbb.end_meeting(meeting_id, "mp-pass").get_field("returncode") == "SUCCESS"
    wrong = lb.call("isMeetingRunning", {"meetingID": meeting_id}, secret="not-the-secret")
    assert wrong.field("messageKey") == "checksumError"


def read_flows(*paths: Path) -> list:  # type: ignore[type-arg]
    flows = []
    for path in paths:
        with open(path, "rb") as f:
            flows += list(io.FlowReader(f).stream())
    return flows


def secrets(sim: Simulator) -> list[bytes]:
    return [s.encode() for s in ["lb-secret", "other-secret", *(server["secret"] for server in sim.servers)]]


def replay(capture: list[Path], target: LB, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addons.cli", "replay", *map(str, capture), "--target", target.url,
         "--secret", secret, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def lbs():  # type: ignore[no-untyped-def]
    started: list[LB] = []
    yield started
    for lb in started:
        if lb.process is not None:
            lb.stop()


def test_capture_then_replay_against_another_lb(tmp_path, sim, lbs):
    sim.reset()
    capture = tmp_path / "capture.flows"
    a = start(tmp_path, sim, "a", ["--save", str(capture)])
    lbs.append(a)
    session(a, "cap-room")
    assert a.stop() == 0  # SIGTERM: the capture is flushed on the way out

    data = capture.read_bytes()
    for secret in secrets(sim):
        assert secret not in data, "a secret leaked into the capture"
    flows = read_flows(capture)
    api = [f for f in flows if f.request.path.startswith("/bigbluebutton/api/")]
    assert [f.metadata["bbb"]["call"] for f in api] == API_CALLS
    for flow in flows:
        meta = flow.metadata["bbb"]
        assert {"call", "route", "server", "checksum", "decision", "backend"} <= set(meta)
        assert set(flow.metadata) <= {"bbb", "bbb_local"}
    assert all(f.metadata["bbb"]["server"] for f in api[:-1] if f.metadata["bbb"]["route"] != "merged")
    assert api[4].metadata["bbb"]["route"] == "merged" and api[4].comment.startswith("getMeetings merged from bbb")
    create = api[0]
    assert create.metadata["bbb"]["decision"]["chosen"] == create.metadata["bbb"]["server"]
    assert create.comment.startswith(f"create → {create.metadata['bbb']['server']} (")
    assert "checksum=" not in json.dumps(create.metadata["bbb"]["backend"])  # backend URLs come unsigned
    assert api[-1].marked == ":red_circle:" and api[-1].metadata["bbb"]["checksum"] == "mismatch"
    assert "password=mp-pass" in api[1].request.path  # not masked unless asked

    b = start(tmp_path, sim, "b", [], secret="other-secret")
    lbs.append(b)
    report = tmp_path / "report.json"
    same = replay([capture], b, "other-secret", "--prefix", "replay-", "--pace", "original",
                  "--follow-redirects", "--report", str(report))
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.strip().endswith(f"replayed {len(API_CALLS)} calls: {len(API_CALLS)} identical, 0 different")
    result = json.loads(report.read_text())
    assert result["different"] == 0 and [c["call"] for c in result["calls"]] == API_CALLS
    assert [c["resigned"] for c in result["calls"]] == [True] * 6 + [False]  # the bad checksum goes as captured
    assert result["calls"][1]["follow_status"] == 302
    created_on = [r for s in sim.servers for r in sim.requests(s["name"])
                  if r["call"] == "create" and "meetingID=replay-cap-room" in r["raw_query"]]
    assert len(created_on) == 1 and created_on[0]["checksum_ok"]
    assert "other-secret" not in report.read_text()

    wrong = replay([capture], b, "not-other-secret", "--pace", "fast", "--prefix", "wrong-")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "checksumError" in wrong.stdout
    assert wrong.stdout.strip().endswith(f"replayed {len(API_CALLS)} calls: 1 identical, 6 different")


def test_rotated_masked_capture_replays_in_pieces(tmp_path, sim, lbs):
    sim.reset()
    capture = tmp_path / "masked.flows"
    c = start(tmp_path, sim, "c", ["--save", str(capture), "--save-max-mb", "0.004", "--save-keep", "20",
                                   "--mask-passwords"])
    lbs.append(c)
    session(c, "masked-room")
    assert c.stop() == 0
    pieces = sorted(tmp_path.glob("masked.flows.*"), key=lambda p: -int(p.suffix[1:])) + [capture]
    assert len(pieces) >= 3, pieces  # rotated
    assert all(p.stat().st_size < 4 * 1024 * 1024 // 1000 + 8192 for p in pieces)
    for piece in pieces:
        data = piece.read_bytes()
        assert b"mp-pass" not in data and b"ap-pass" not in data
        assert not any(secret in data for secret in secrets(sim))
    flows = read_flows(*pieces)
    join = next(f for f in flows if f.metadata["bbb"]["call"] == "join")
    assert "password=***" in join.request.path and "password=***" in join.response.headers["Location"]

    # Masked passwords replay as "***" everywhere: consistent, so the session still replays identically.
    b = start(tmp_path, sim, "b", [], secret="other-secret")
    lbs.append(b)
    masked = replay(pieces, b, "other-secret", "--prefix", "m-", "--pace", "fast")
    assert masked.returncode == 0, masked.stdout + masked.stderr
    assert "0 different" in masked.stdout
