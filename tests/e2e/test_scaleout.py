"""Several ``bbb-lb run`` processes on one real redis-server behave as one load balancer (issue 12)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LB, REPO, RedisServer, Simulator, http, make_lb, wait_for

ADMIN_TOKEN = "admin-token-0123456789"


def redis_lb(tmp_path: Path, sim: Simulator, redis_server: RedisServer, prefix: str, name: str,
             **overrides: Any) -> LB:
    folder = tmp_path / name
    folder.mkdir()
    lb = make_lb(folder, sim, store={"backend": "redis", "url": redis_server.url, "prefix": prefix},
                 admin={"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN}, **overrides)
    return lb


@pytest.fixture
def pair(tmp_path: Path, sim: Simulator, redis_server: RedisServer, redis_prefix: str):  # type: ignore[no-untyped-def]
    sim.reset()
    lbs = [redis_lb(tmp_path, sim, redis_server, redis_prefix, name).start() for name in ("a", "b")]
    yield lbs
    stuck = []
    for lb in lbs:
        if lb.process is not None:
            process = lb.process
            try:
                lb.stop()
            except subprocess.TimeoutExpired:  # never leave it polling the session's simulator
                process.kill()
                process.wait(10)
                stuck.append(lb.log()[-2000:])
    assert not stuck, f"bbb-lb did not stop on SIGTERM: {stuck}"


def admin(lb: LB, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
    reply = http(f"http://127.0.0.1:{lb.bound['admin']}{path}",
                 method=method or ("POST" if body is not None else "GET"),
                 data=json.dumps(body).encode() if body is not None else None,
                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    assert reply.status < 300, (path, reply.status, reply.text)
    return json.loads(reply.body)


def create(lb: LB, meeting_id: str) -> str:
    reply = lb.call("create", {"meetingID": meeting_id, "name": meeting_id})
    assert "<returncode>SUCCESS</returncode>" in reply.text, reply.text
    return reply.text


def server_of(sim: Simulator, meeting_id: str) -> list[str]:
    return [s["name"] for s in sim.control("/servers") if meeting_id in s["meetings"]]


def joined_host(lb: LB, meeting_id: str) -> str:
    reply = lb.call("join", {"meetingID": meeting_id, "fullName": "Ann", "role": "VIEWER"})
    assert reply.status == 302, reply.text
    return reply.headers["Location"].split("/bigbluebutton/")[0]


def url_of(sim: Simulator, name: str) -> str:
    return next(s["url"] for s in sim.servers if s["name"] == name).split("/bigbluebutton/")[0]


def test_a_meeting_created_on_one_instance_is_joined_listed_and_ended_on_the_other_at_once(pair, sim):
    a, b = pair
    create(a, "shared-room")
    [server] = server_of(sim, "shared-room")
    assert joined_host(b, "shared-room") == url_of(sim, server)  # no poll, no wait: read through Redis
    assert "<meetingID>shared-room</meetingID>" in b.call("getMeetings").text
    info = b.call("getMeetingInfo", {"meetingID": "shared-room"})
    assert "<returncode>SUCCESS</returncode>" in info.text
    ended = b.call("end", {"meetingID": "shared-room"})
    assert "<returncode>SUCCESS</returncode>" in ended.text
    # Ended through b: a knows at once (its own memory said it ran).
    assert "<messageKey>notFound</messageKey>" in a.call("getMeetingInfo", {"meetingID": "shared-room"}).text
    assert "<running>false</running>" in a.call("isMeetingRunning", {"meetingID": "shared-room"}).text
    assert a.call("join", {"meetingID": "shared-room", "fullName": "Bo", "role": "VIEWER"}).status != 302


def test_one_meeting_id_created_on_both_instances_at_once_lands_on_one_server(pair, sim):
    a, b = pair
    for round_ in range(5):
        meeting_id = f"race-{round_}"
        barrier = threading.Barrier(4)

        def go(lb: LB, meeting_id: str = meeting_id, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return lb.call("create", {"meetingID": meeting_id, "name": "Race"}).text

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(go, [a, b, a, b]))
        assert all("<returncode>SUCCESS</returncode>" in text for text in answers), answers
        assert len(server_of(sim, meeting_id)) == 1


def test_one_instance_polls_and_a_killed_poller_is_replaced(pair, sim, redis_server, redis_prefix):
    a, b = pair
    client = redis_server.client()
    holder = wait_for(lambda: client.get(f"{redis_prefix}:poller"), 10, what="a poller")
    nodes = wait_for(lambda: (n := admin(a, "/api/status").get("nodes")) and len(n) == 2 and n, 10,
                     what="both instances on the dashboard")
    assert sum(1 for n in nodes if n["poller"]) == 1
    assert next(n for n in nodes if n["poller"])["node"] == holder
    # Backends are asked by one process: over a few intervals, getMeetings per server ~ one per interval.
    requests_before = len([r for r in sim.requests("bbb1") if r.get("call") == "getMeetings"])
    wait_for(lambda: len([r for r in sim.requests("bbb1") if r.get("call") == "getMeetings"])
             >= requests_before + 6, 15, what="polls")
    polled = len([r for r in sim.requests("bbb1") if r.get("call") == "getMeetings"]) - requests_before
    assert polled <= 8  # two pollers would have made ~12 in the time one makes 6
    leader = next(lb for lb in (a, b) if str(lb.process.pid) in holder)  # type: ignore[union-attr]
    other = b if leader is a else a
    leader.stop(signal.SIGKILL)
    taken = wait_for(lambda: (h := client.get(f"{redis_prefix}:poller")) and h != holder and h, 10,
                     what="the other instance to take the lease")
    assert str(other.process.pid) in taken  # type: ignore[union-attr]


def test_kill_9_of_one_of_two_instances_while_calls_run_loses_no_meeting(pair, sim):
    a, b = pair
    meetings = [f"k-{i}" for i in range(12)]
    for i, meeting_id in enumerate(meetings):
        create(a if i % 2 else b, meeting_id)
    placed = {m: server_of(sim, m)[0] for m in meetings}
    failures: list[str] = []
    stop = threading.Event()

    def keep_calling() -> None:
        while not stop.is_set():
            for meeting_id in meetings:
                reply = b.call("getMeetingInfo", {"meetingID": meeting_id})
                if "<returncode>SUCCESS</returncode>" not in reply.text:
                    failures.append(reply.text)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        a.stop(signal.SIGKILL)
        for meeting_id in meetings:
            assert joined_host(b, meeting_id) == url_of(sim, placed[meeting_id])
    finally:
        stop.set()
        caller.join(30)
    assert failures == []


def test_200_creates_over_two_instances_and_five_servers_spread_within_twice_the_mean(pair, sim):
    a, b = pair

    def go(i: int) -> str:
        return (a if i % 2 else b).call("create", {"meetingID": f"burst-{i}", "name": "Burst"}).text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(go, range(200)))
    assert all("<returncode>SUCCESS</returncode>" in text for text in answers)
    counts = Counter(name for i in range(200) for name in server_of(sim, f"burst-{i}"))
    assert sum(counts.values()) == 200
    assert max(counts.values()) <= 2 * 200 / 5, counts


def test_the_admin_api_of_one_instance_acts_on_all(pair):
    a, b = pair
    admin(a, "/api/servers/bbb2/state", {"state": "disabled"})
    wait_for(lambda: next(s for s in admin(b, "/api/servers") if s["name"] == "bbb2")["is_disabled"], 5,
             what="b to see bbb2 disabled")
    admin(b, "/api/integrations/moodle", {"secret": "moodle-secret-1234"}, method="PUT")
    wait_for(lambda: "<returncode>SUCCESS</returncode>" in a.call("getMeetings", secret="moodle-secret-1234").text,
             5, what="a to accept the integration added on b")
    before = admin(b, "/api/rules")
    changed = admin(a, "/api/rules", {"create": {"duration": {"max": 120}}}, method="PUT")
    assert changed != before
    wait_for(lambda: admin(b, "/api/rules") == changed, 5, what="b to apply the global rules set on a")


def test_metrics_name_the_instance(pair):
    a, b = pair
    nodes = {lb.bound["admin"]: admin(lb, "/api/status")["node"] for lb in (a, b)}
    assert len(set(nodes.values())) == 2
    for lb in (a, b):
        text = http(f"http://127.0.0.1:{lb.bound['admin']}/metrics",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
        assert f'instance_id="{nodes[lb.bound["admin"]]}"' in text
        assert "bbb_lb_meetings{" in text


def test_workers_share_one_port(tmp_path, sim, redis_server, redis_prefix):
    sim.reset()
    lb = redis_lb(tmp_path, sim, redis_server, redis_prefix, "w")
    lb.extra_args = ["--workers", "2"]
    lb.start()
    try:
        ports = json.loads(lb.config_path.with_name(lb.config_path.stem + ".ports.json").read_text())
        assert len(ports["workers"]) == 2 and len({w["admin"] for w in ports["workers"]}) == 2
        admins = [w["admin"] for w in ports["workers"]]
        nodes = wait_for(lambda: (n := admin(lb, "/api/status").get("nodes")) and len(n) == 2 and n, 15,
                         what="both workers alive")
        assert {n["pid"] for n in nodes} == {w["pid"] for w in ports["workers"]}
        create(lb, "w-room")
        answered: Counter[int] = Counter()
        for _ in range(60):
            assert lb.call("isMeetingRunning", {"meetingID": "w-room"}).status == 200
        for port in admins:
            text = http(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
            answered[port] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                 if line.startswith("bbb_lb_requests_total{") and 'call="isMeetingRunning"' in line)
        assert all(answered[port] > 0 for port in admins), answered  # the kernel spread the connections
    finally:
        assert lb.stop() == 0


def test_a_worker_killed_is_restarted_and_the_other_answers_meanwhile(tmp_path, sim, redis_server, redis_prefix):
    sim.reset()
    lb = redis_lb(tmp_path, sim, redis_server, redis_prefix, "w")
    lb.extra_args = ["--workers", "2"]
    lb.start()
    try:
        assert lb.process is not None
        children = Path(f"/proc/{lb.process.pid}/task/{lb.process.pid}/children")
        first = children.read_text().split()
        assert len(first) == 2
        create(lb, "survivor")
        subprocess.run(["kill", "-9", first[0]], check=True)

        def dead(pid: str) -> bool:
            status = Path(f"/proc/{pid}/status")
            return not status.exists() or "\nState:\tZ" in status.read_text()

        # Connections queued at the killed worker's socket when it died are reset (SO_REUSEPORT keeps no
        # shared queue); once it is gone, the kernel sends every new one to the live worker.
        wait_for(lambda: dead(first[0]), 10, what="the worker to die")
        resets = 0
        for _ in range(30):
            try:
                reply = lb.call("getMeetingInfo", {"meetingID": "survivor"})
            except (ConnectionResetError, urllib.error.URLError):  # one in flight at the dead worker's socket
                resets += 1
                reply = lb.call("getMeetingInfo", {"meetingID": "survivor"})  # as a front retries an error
            assert "<returncode>SUCCESS</returncode>" in reply.text
        assert resets <= 2
        now = wait_for(lambda: len(c := children.read_text().split()) == 2 and first[0] not in c and c, 20,
                       what="the supervisor to restart the worker")
        ports = json.loads(lb.config_path.with_name(lb.config_path.stem + ".ports.json").read_text())
        survivor = LB(lb.config_path, lb.config, lb.log_path,
                      bound={"admin": next(w["admin"] for w in ports["workers"] if str(w["pid"]) != first[0])})
        wait_for(lambda: {n["pid"] for n in admin(survivor, "/api/status")["nodes"]} >= {int(p) for p in now}, 20,
                 what="the new worker's heartbeat")
    finally:
        assert lb.stop() == 0


def test_workers_with_the_embedded_store_are_refused(tmp_path, sim):
    lb = make_lb(tmp_path, sim)
    lb.config_path.write_text(json.dumps(lb.config))
    done = subprocess.run([sys.executable, "-m", "addons.cli", "run", "--config", str(lb.config_path),
                           "--workers", "2"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert "--workers 2 needs store.backend: redis" in done.stderr


def test_two_instances_never_give_one_voice_bridge_to_two_meetings_of_a_server(pair):
    a, b = pair
    barrier = threading.Barrier(6)

    def go(i: int) -> str:
        barrier.wait()
        return (a if i % 2 else b).call("create", {"meetingID": f"vb-{i}", "name": "Voice", "voiceBridge": "71234",
                                                   "preferredServer": "bbb1"}).text

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(go, range(6)))
    bridges = [text.split("<voiceBridge>")[1].split("</voiceBridge>")[0] for text in answers]
    assert len(set(bridges)) == 6, bridges


@pytest.mark.browser
def test_the_dashboard_of_any_instance_lists_every_live_one(pair, tmp_path):
    import lxml.html

    from tests.e2e.test_dashboard import chromium

    a, b = pair
    nodes = wait_for(lambda: (n := admin(a, "/api/status").get("nodes")) and len(n) == 2 and n, 10,
                     what="both instances' heartbeats")
    dom = chromium(tmp_path / "profile", f"http://127.0.0.1:{a.bound['admin']}/dashboard?token={ADMIN_TOKEN}",
                   "--dump-dom")
    page = lxml.html.fromstring(dom)
    assert page.get_element_by_id("nodes-section").get("hidden") is None
    rows = [[td.text_content().strip() for td in row.xpath("td")] for row in page.xpath('//table[@id="nodes"]/tbody/tr')]
    assert sorted(row[2] for row in rows) == sorted(str(n["pid"]) for n in nodes)
    assert sum(1 for row in rows if row[3] == "poller") == 1
    assert sum(1 for row in rows if row[0].endswith("(this one)")) == 1
