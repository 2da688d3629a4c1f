"""recordings.upload_rate_limit: a recording upload is read no faster than the operator allows, and the
API answers promptly meanwhile (an unthrottled upload on a fast link takes half the event loop)."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.conftest import LB, Simulator, make_lb, raw_upload, start_simulator_for

RATE = 1024 * 1024  # bytes/s


@pytest.fixture
def publishing_sim(tmp_path: Path) -> Any:
    simulator = start_simulator_for([{"name": "bbb1", "url": "http://127.0.0.1:0/bigbluebutton/",
                                      "secret": "secret-1", "published_dir": str(tmp_path / "published")}])
    yield simulator
    simulator.process.terminate()
    simulator.process.wait(10)


@pytest.fixture
def slow_lb(tmp_path: Path, publishing_sim: Simulator) -> Any:
    lb = make_lb(tmp_path, publishing_sim, servers=[],
                 recordings={"storage": str(tmp_path / "storage"), "upload_rate_limit": RATE})
    lb.config["servers"] = [{k: v for k, v in s.items() if k != "published_dir"} for s in publishing_sim.servers]
    lb.start()
    yield lb
    lb.stop()


def test_an_upload_is_read_at_the_rate_limit_while_the_api_answers(slow_lb: LB, publishing_sim: Simulator,
                                                                   tmp_path: Path) -> None:
    publishing_sim.control("/servers/bbb1/recordings", {"meetingID": "m", "recordID": "rec-slow"})
    source = tmp_path / "published" / "presentation" / "rec-slow"
    (source / "video.webm").write_bytes(os.urandom(3 * RATE))  # incompressible: 3 s at the limit
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(source, arcname="presentation/rec-slow")
    token = jwt.encode({"sub": "bbb1", "exp": int(time.time()) + 300}, "secret-1", algorithm="HS256")
    answers: list[bytes] = []
    started = time.monotonic()
    sender = threading.Thread(target=lambda: answers.append(raw_upload(slow_lb, {"Authorization": f"Bearer {token}"}, buffer.getvalue(), timeout=30)))
    sender.start()
    slowest = 0.0
    while sender.is_alive() and time.monotonic() - started < 30:
        asked = time.monotonic()
        assert slow_lb.call("getMeetings").xml().findtext("returncode") == "SUCCESS"
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.05)
    sender.join(30)
    took = time.monotonic() - started
    assert answers and b" 200 " in answers[0].split(b"\r\n", 1)[0], answers
    assert took >= 2.5, f"3 MiB at 1 MiB/s arrived in {took:.2f} s"
    assert slowest < 1.0, f"an API call waited {slowest:.2f} s behind the upload"
    assert (tmp_path / "storage" / "rec-slow" / "presentation" / "video.webm").stat().st_size == 3 * RATE
