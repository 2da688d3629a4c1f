"""A start that cannot succeed ends in one clear line and exit code 2, through a real ``bbb-lb run``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LB, REPO, free_port, http

TIMEOUT_S = 60


def config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "secret": "lb-secret",
        "servers": [{"name": "bbb1", "url": f"http://127.0.0.1:{free_port()}/bigbluebutton/", "secret": "s1"}],
        "store": {"path": str(tmp_path / "lb.json")},
        "monitor": {"interval_s": 0.5, "timeout_s": 1.0},
    }
    data.update(overrides)
    return data


def run_lb(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> tuple[int, list[str]]:
    """``bbb-lb run`` expected to give up: its exit code and every line it printed."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "addons.cli", "run", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return done.returncode, [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def assert_one_line(result: tuple[int, list[str]], *expected: str) -> None:
    code, lines = result
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("bbb-lb: "), lines
    for text in expected:
        assert text in lines[0], lines
    assert "Traceback" not in lines[0] and "mitmproxy" not in lines[0]


def test_the_api_port_in_use(tmp_path, taken_port):
    assert_one_line(run_lb(tmp_path, config(tmp_path, listen={"host": "127.0.0.1", "port": taken_port})),
                    f"cannot listen on 127.0.0.1:{taken_port} (listen.port)", "in use")


def test_the_admin_port_in_use(tmp_path, taken_port):
    data = config(tmp_path, admin={"host": "127.0.0.1", "port": taken_port, "token": "t" * 32})
    assert_one_line(run_lb(tmp_path, data), f"cannot listen on 127.0.0.1:{taken_port} (admin.port)", "in use")


def test_a_simulated_server_port_in_use(tmp_path, taken_port):
    data = config(tmp_path, servers=[{"name": "bbb1", "url": f"http://127.0.0.1:{taken_port}/bigbluebutton/",
                                      "secret": "s1", "simulate": True}])
    assert_one_line(run_lb(tmp_path, data), "simulated BBB servers cannot start", "bbb1", "in use")


def test_a_second_lb_on_the_same_store(tmp_path, lb_factory):
    first = lb_factory()
    data = config(tmp_path, store={"path": first.config["store"]["path"]})
    assert_one_line(run_lb(tmp_path, data, "second.yaml"), "is in use by another bbb-lb process")
    assert http(first.api.rstrip("/")).status == 200  # the first one is untouched


def test_an_unreadable_store(tmp_path):
    (tmp_path / "lb.json").mkdir()  # root reads any file: a directory where the file should be cannot be read
    assert_one_line(run_lb(tmp_path, config(tmp_path)), "cannot read the store", str(tmp_path / "lb.json"))


def test_a_corrupt_store(tmp_path):
    (tmp_path / "lb.json").write_text("{half a store")
    assert_one_line(run_lb(tmp_path, config(tmp_path)), "not a valid TinyDB file")


def test_two_configs_with_simulated_servers_run_side_by_side(tmp_path):
    """Each ``simulate: true`` config starts its own simulator; they no longer share a fixed control port."""
    started: list[LB] = []
    try:
        for n in (1, 2):
            folder = tmp_path / f"lb{n}"
            folder.mkdir()
            data = config(folder, servers=[{"name": f"sim{n}", "secret": f"s{n}", "simulate": True,
                                            "url": f"http://127.0.0.1:{free_port()}/bigbluebutton/"}])
            lb = LB(folder / "config.yaml", data, folder / "lb.log")
            started.append(lb.start())
        for lb in started:
            reply = lb.call("getMeetings")
            assert reply.status == 200 and reply.field("returncode") == "SUCCESS", reply.text
    finally:
        for lb in started:
            if lb.process is not None:
                lb.stop()
