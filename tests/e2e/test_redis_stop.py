"""SIGTERM stops ``bbb-lb run`` on the Redis store within the systemd unit's budget, whatever Redis does.

The unit gives a stop ``TimeoutStopSec=20`` (10 s of it for the calls being answered); past that, systemd
kills the process and whatever it had not written is lost. Redis may be frozen (a stopped process, a
saturated host, a network partition: the socket stays open and nothing answers) exactly while bbb-lb stops.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from tests.conftest import LB, RedisServer, wait_for

UNIT_TIMEOUT_STOP_S = 20.0
BUDGET_S = 15.0  # what a stop may take here: the unit's 20 s, less a margin for a loaded test machine


def create(lb: LB, meeting_id: str, timeout: float = 15.0) -> Any:
    return lb.call("create", {"meetingID": meeting_id, "name": meeting_id}, timeout=timeout)


def stop_timed(lb: LB) -> tuple[int | None, float]:
    """SIGTERM; the exit code (None: still running after the unit's timeout, then killed) and the time taken."""
    assert lb.process is not None
    process = lb.process
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code: int | None = process.wait(UNIT_TIMEOUT_STOP_S)
    except Exception:  # noqa: BLE001 - what systemd would do; the test then fails naming the time
        process.kill()
        process.wait(10)
        code = None
    lb.process = None
    return code, time.monotonic() - started


def test_sigterm_stops_within_the_unit_budget_while_redis_is_frozen(lb_factory, own_redis: RedisServer):
    """redis-server is SIGSTOPped: connections stay open, nothing answers. Every Redis step of the stop
    (heartbeat, change listener, lease release, node removal, event flush, pool close) must give up in
    time; the process exits 0 and says it stopped."""
    lb = lb_factory(servers=[0, 1], store={"backend": "redis", "url": own_redis.url, "prefix": "lb"})
    assert create(lb, "before").field("returncode") == "SUCCESS"
    assert own_redis.process is not None
    wait_for(lambda: own_redis.client().get("lb:poller"), 10, what="this instance to be the poller")
    frozen = own_redis.process
    frozen.send_signal(signal.SIGSTOP)
    try:
        # A create arrives while Redis is frozen: it is in flight (waiting on Redis) when SIGTERM comes.
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(create(lb, "during", timeout=30)), daemon=True)
        caller.start()
        time.sleep(0.2)  # the create reaches the LB and waits on Redis; the test holds either way
        code, took = stop_timed(lb)
        caller.join(5)
    finally:
        frozen.send_signal(signal.SIGCONT)
    log = lb.log()
    assert code == 0, f"exit {code} after {took:.1f} s (None: killed after {UNIT_TIMEOUT_STOP_S} s)\n{log[-3000:]}"
    assert took < BUDGET_S, f"SIGTERM took {took:.1f} s\n{log[-3000:]}"
    assert "bbb-lb stopped" in log
    assert "Traceback" not in log, log[-3000:]


def test_sigterm_stops_in_time_though_a_call_to_redis_may_take_longer_than_the_stop(lb_factory,
                                                                                  own_redis: RedisServer):
    """An operator's ``store.timeout_s: 30`` (a slow link to Redis) and a Redis that stops answering: the
    stop does not wait 30 s per step (the node entry, the lease, the last events), each gives up in time."""
    lb = lb_factory(servers=[0, 1], store={"backend": "redis", "url": own_redis.url, "prefix": "lb", "timeout_s": 30})
    assert create(lb, "before").field("returncode") == "SUCCESS"
    wait_for(lambda: own_redis.client().get("lb:poller"), 10, what="this instance to be the poller")
    assert own_redis.process is not None
    frozen = own_redis.process
    frozen.send_signal(signal.SIGSTOP)
    try:
        code, took = stop_timed(lb)
    finally:
        frozen.send_signal(signal.SIGCONT)
    log = lb.log()
    assert code == 0, f"exit {code} after {took:.1f} s (None: killed after {UNIT_TIMEOUT_STOP_S} s)\n{log[-3000:]}"
    assert took < BUDGET_S, f"SIGTERM took {took:.1f} s\n{log[-3000:]}"
    assert "bbb-lb stopped" in log and "Traceback" not in log
