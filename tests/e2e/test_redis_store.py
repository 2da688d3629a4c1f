"""``bbb-lb run`` on the Redis store, through real processes: start errors, /health, a Redis restart under
load, and ``bbb-lb migrate`` between TinyDB and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LB, REPO, RedisServer, Simulator, free_port, http, wait_for
from tests.e2e.test_start_failures import assert_one_line, config, run_lb

TOKEN = "redis-admin-token-0123456789"
REDIS_PASSWORD = "redis-pw-never-logged"
STORE_TIMEOUT_S = 0.5


def redis_store(server: RedisServer, prefix: str = "lb") -> dict[str, Any]:
    return {"backend": "redis", "url": server.url, "prefix": prefix, "timeout_s": STORE_TIMEOUT_S}


def health(lb: LB) -> tuple[int, dict[str, Any]]:
    reply = http(f"http://127.0.0.1:{lb.config['admin']['port']}/health", timeout=5)
    return reply.status, json.loads(reply.body)


def create(lb: LB, meeting_id: str, timeout: float = 15.0) -> Any:
    return lb.call("create", {"meetingID": meeting_id, "name": meeting_id, "moderatorPW": "mp", "attendeePW": "ap"},
                   timeout=timeout)


def joined_server(lb: LB, sim: Simulator, meeting_id: str) -> str:
    reply = lb.call("join", {"meetingID": meeting_id, "fullName": "Ann", "password": "mp"})
    assert reply.status == 302, reply.text
    return next(s["name"] for s in sim.servers
                if reply.headers["Location"].startswith(s["url"].split("/bigbluebutton")[0]))


def test_an_unreachable_redis_stops_the_start_naming_the_url_without_its_password(tmp_path):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = run_lb(tmp_path, config(tmp_path, store={"backend": "redis", "url": url}))
    assert_one_line(result, "cannot reach the store", url.replace("hunter2", "***"))
    assert "hunter2" not in "".join(result[1])


def test_health_reports_whether_redis_answers(lb_factory, own_redis):
    lb = lb_factory(store=redis_store(own_redis), admin={"host": "127.0.0.1", "port": 0, "token": TOKEN})
    wait_for(lambda: health(lb)[0] == 200, 15, what="a healthy LB")
    assert health(lb)[1]["store"] == "ok"
    own_redis.stop()
    status, payload = health(lb)
    assert status == 503 and payload["store"] == "unavailable" and "Redis" in payload["reason"]
    assert "127.0.0.1" not in json.dumps(payload)  # where Redis lives is not told to anonymous callers
    own_redis.start()
    wait_for(lambda: health(lb)[0] == 200, 15, what="healthy again without a restart")


@dataclass
class Outcome:
    at: float
    seconds: float
    call: str
    result: str  # SUCCESS, FAILED:<messageKey>, REDIRECT, or what went wrong


class LightLoad:
    """One client calling create / join / isMeetingRunning in a loop, recording every answer and its time."""

    def __init__(self, lb: LB, known: list[str]) -> None:
        self.lb = lb
        self.known = known
        self.created: list[str] = []
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LightLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            meeting = self.known[n % len(self.known)]
            for call, params in (("create", {"meetingID": f"load-{n}", "name": "load", "moderatorPW": "mp",
                                             "attendeePW": "ap"}),
                                 ("join", {"meetingID": meeting, "fullName": "Bo", "password": "ap"}),
                                 ("isMeetingRunning", {"meetingID": meeting})):
                started = time.monotonic()
                try:
                    reply = self.lb.call(call, params, timeout=10)
                    if reply.status == 302:
                        result = "REDIRECT"
                    else:
                        code = reply.field("returncode")
                        result = code if code == "SUCCESS" else f"{code}:{reply.field('messageKey')}"
                except Exception as exc:  # noqa: BLE001 - recorded, the test reads it
                    result = f"error {type(exc).__name__}: {exc}"
                self.outcomes.append(Outcome(started, time.monotonic() - started, call, result))
                if call == "create" and result == "SUCCESS":
                    self.created.append(params["meetingID"])
            time.sleep(0.02)

    def seen(self, predicate: Any, since: float) -> bool:
        return any(predicate(o) for o in list(self.outcomes) if o.at >= since)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-pw", password=REDIS_PASSWORD).start()
    yield server
    server.stop()


def test_a_redis_restart_under_load_fails_calls_promptly_and_everything_resumes(lb_factory, sim,
                                                                                redis_with_password):
    own_redis = redis_with_password
    lb = lb_factory(servers=[0, 1, 2], store=redis_store(own_redis))
    known = []
    for i in range(6):
        assert create(lb, f"known-{i}").field("returncode") == "SUCCESS"
        known.append(f"known-{i}")
    where = {m: joined_server(lb, sim, m) for m in known}
    pid = lb.process.pid
    with LightLoad(lb, known) as load:
        wait_for(lambda: load.seen(lambda o: o.result == "SUCCESS", 0), 15, what="calls under way")
        down_at = time.monotonic()
        own_redis.stop()
        wait_for(lambda: load.seen(lambda o: o.call == "create" and o.result.startswith("FAILED"), down_at), 15,
                 what="a create failing while Redis is down")
        time.sleep(1.0)  # an outage of a second or so, under load
        up_at = time.monotonic()
        own_redis.start()
        try:
            wait_for(lambda: load.seen(lambda o: o.call == "create" and o.result == "SUCCESS", up_at), 20,
                     what="creates working again, without a restart of bbb-lb")
        except AssertionError as exc:  # say what the calls got instead
            raise AssertionError(f"{exc}: {[o for o in load.outcomes if o.at >= up_at][-6:]}\n"
                                 f"{lb.log()[-3000:]}") from None
    assert lb.process.pid == pid and lb.process.poll() is None
    outcomes = load.outcomes
    bad = [o for o in outcomes if o.result not in ("SUCCESS", "REDIRECT", "FAILED:internalError",
                                                   "FAILED:serverUnavailable", "FAILED:notFound")]
    assert not bad, bad[:5]  # every call answered in BBB's words: no hang, no HTML, no dropped connection
    slowest = max(o.seconds for o in outcomes)
    assert slowest < 4 * STORE_TIMEOUT_S + 1.0, slowest  # prompt: a few store timeouts at most, never a hang
    assert {m: joined_server(lb, sim, m) for m in known} == where  # no mapping lost
    assert load.created
    for meeting in load.created:  # every create that was answered SUCCESS is still known and routable
        reply = lb.call("getMeetingInfo", {"meetingID": meeting, "password": "mp"})
        assert reply.field("returncode") == "SUCCESS", (meeting, reply.text)
    assert "Traceback" not in lb.log() and REDIS_PASSWORD not in lb.log()
    assert "redis://:***@127.0.0.1" in lb.log()  # the outage is logged, naming Redis without its password


def test_a_slow_redis_makes_calls_fail_within_backend_timeout(lb_factory, own_redis):
    """No store.timeout_s: a Redis that does not answer is given backend.timeout_s at most."""
    store = {"backend": "redis", "url": own_redis.url, "prefix": "lb"}
    lb = lb_factory(servers=[0, 1], store=store, backend={"timeout_s": 0.5, "connect_timeout_s": 0.5})
    assert create(lb, "before").field("returncode") == "SUCCESS"
    sleeper = own_redis.sleep_in_background(3)  # Redis answers nobody for 3 s
    try:
        started = time.monotonic()
        reply = create(lb, "during-sleep", timeout=10)
        took = time.monotonic() - started
        assert (reply.field("returncode"), reply.field("messageKey")) == ("FAILED", "internalError"), reply.text
        assert took < 0.5 * 2 + 0.5, took  # the backend timeout (a retry at most), not Redis's 3 s
    finally:
        sleeper.join()
    wait_for(lambda: create(lb, "after-sleep").field("returncode") == "SUCCESS", 15, what="creates after the sleep")
    assert "Traceback" not in lb.log()


def migrate(source: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "addons.cli", "migrate", "--from", str(source), "--to", str(target),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_migrate_moves_a_running_setup_from_tinydb_to_redis_and_back(lb_factory, sim, redis_server, redis_prefix,
                                                                   tmp_path):
    lb = lb_factory(servers=[0, 1, 2])
    meetings = [f"mig-{i}" for i in range(5)]
    for meeting in meetings:
        assert create(lb, meeting).field("returncode") == "SUCCESS"
    where = {m: joined_server(lb, sim, m) for m in meetings}
    tiny_config = lb.config_path

    redis_config = tmp_path / "redis.yaml"
    redis_config.write_text(yaml.safe_dump({**lb.config, "store": redis_store(redis_server, redis_prefix)}))
    locked = migrate(tiny_config, redis_config)
    assert locked.returncode == 2 and "in use by another bbb-lb process" in locked.stderr  # stop the LB first
    lb.stop()

    done = migrate(tiny_config, redis_config)
    assert done.returncode == 0, done.stderr
    assert "meetings: 5" in done.stdout and "redis redis://127.0.0.1" in done.stdout
    again = migrate(tiny_config, redis_config)
    assert again.returncode == 2 and "already holds data" in again.stderr
    same = migrate(redis_config, redis_config)
    assert same.returncode == 2 and "the same store" in same.stderr

    on_redis = LB(redis_config, yaml.safe_load(redis_config.read_text()), tmp_path / "redis-lb.log").start()
    try:
        assert {m: joined_server(on_redis, sim, m) for m in meetings} == where
    finally:
        on_redis.stop()

    back_config = tmp_path / "back.yaml"
    back_config.write_text(yaml.safe_dump({**lb.config, "store": {"path": str(tmp_path / "back" / "lb.json")}}))
    back = migrate(redis_config, back_config)
    assert back.returncode == 0, back.stderr and "meetings: 5" in back.stdout
    on_tiny = LB(back_config, yaml.safe_load(back_config.read_text()), tmp_path / "back-lb.log").start()
    try:
        assert {m: joined_server(on_tiny, sim, m) for m in meetings} == where
    finally:
        on_tiny.stop()
