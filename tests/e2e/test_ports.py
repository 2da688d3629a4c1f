"""``listen.port: 0`` and ``admin.port: 0``: bbb-lb binds free ports and says which (--ports-file, log)."""

from __future__ import annotations

import json

from tests.conftest import http, make_lb, wait_for


def test_port_0_is_bound_reported_and_used_for_callbacks(tmp_path, sim):
    sim.reset()
    lb = make_lb(tmp_path, sim, servers=[0], admin={"host": "127.0.0.1", "port": 0, "token": "t" * 24})
    lb.start()  # reads the ports file, as any script would
    try:
        ports = json.loads(lb.config_path.with_name("config.ports.json").read_text())
        assert ports == {"listen": lb.port, "admin": lb.config["admin"]["port"]}
        assert all(port > 0 for port in ports.values())
        assert http(f"http://127.0.0.1:{ports['admin']}/health").status == 200
        line = f"bbb-lb listening on http://127.0.0.1:{ports['listen']}/bigbluebutton/api"
        wait_for(lambda: line in lb.log(), 5, what="the listening line (log lines are written in batches)")
        # No public_url: the callback address BBB is given carries the bound port, not 0.
        reply = lb.call("create", {"meetingID": "cb", "name": "cb", "meta_endCallbackUrl": "http://example.org/x"})
        assert reply.field("returncode") == "SUCCESS", reply.text
        forwarded = [r for r in sim.requests("bbb1") if r["call"] == "create"][-1]["raw_query"]
        assert f"127.0.0.1%3A{ports['listen']}%2Fbigbluebutton%2Flb%2Fcallback" in forwarded, forwarded
        # A restart binds the same ports again: callbacks handed out before still arrive.
        lb.restart()
        assert lb.port == ports["listen"] and lb.config["admin"]["port"] == ports["admin"]
    finally:
        lb.stop()
