"""The Annotate and Capture addons in mitmproxy's test harness (taddons/tflow), without a running LB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mitmproxy import http, io
from mitmproxy.addons import view
from mitmproxy.test import taddons, tflow

from addons.annotate import Annotate, describe
from addons.capture import Capture
from addons.lb import BbbLoadBalancer
from lb_core.api import Answer
from lb_core.trace import Handled, Trace

DECISION = {
    "chosen": "bbb2", "reason": "lowest load per weight",
    "candidates": [
        {"server": "bbb1", "load": 12.0, "weight": 1.0, "score": 12.0},
        {"server": "bbb2", "load": 3.0, "weight": 1.0, "score": 3.0},
        {"server": "bbb3", "load": 0.0, "weight": 1.0, "score": 0.0, "excluded": "draining"},
    ],
}


def xml_handled(body: bytes, **trace: Any) -> Handled:
    return Handled(Answer.xml(body), Trace(**trace))


def create_answer() -> Handled:
    body = b"<response><returncode>SUCCESS</returncode><attendeePW>ap</attendeePW></response>"
    return xml_handled(body, call="create", integration="default", meeting_id="room-1", checksum="ok",
                      route="routed", server="bbb2", result="SUCCESS", decision=DECISION,
                      backend=[{"server": "bbb2", "call": "create", "status": 200, "ms": 4.2,
                                "url": "http://127.0.0.1:1/bigbluebutton/api/create?meetingID=room-1"}])


def api_flow(query: str = "meetingID=room-1&checksum=" + "a" * 40) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request.path = "/bigbluebutton/api/create?" + query
    return flow


def test_annotate_puts_the_decision_on_the_flow():
    lb = BbbLoadBalancer()
    annotate = Annotate(lb)
    assert lb.on_answer == [annotate.on_answer]
    flow = api_flow()
    with taddons.context(annotate):
        annotate.running()  # no view addon in this master: no child flows, nothing else to do
        annotate.on_answer(flow, create_answer(), 5.678)
    meta = flow.metadata["bbb"]
    assert meta == {"call": "create", "integration": "default", "meetingID": "room-1", "checksum": "ok",
                    "route": "routed", "server": "bbb2", "result": "SUCCESS", "ms": 5.68,
                    "decision": DECISION, "backend": create_answer().trace.backend}
    json.dumps(meta)  # JSON-serialisable, and so storable in a flow file
    assert flow.comment == "create → bbb2 (lowest load per weight; bbb1 12.0, bbb2 3.0, bbb3 excluded: draining) SUCCESS"
    assert flow.marked == ""


def test_annotate_marks_checksum_failures_and_failed_answers():
    annotate = Annotate(BbbLoadBalancer())
    bad = api_flow()
    annotate.on_answer(bad, xml_handled(b"<response><returncode>FAILED</returncode></response>",
                                       call="create", checksum="mismatch", result="checksumError"), 0.1)
    assert bad.marked == ":red_circle:" and bad.comment == "create checksumError (checksum mismatch)"
    missing = api_flow()
    annotate.on_answer(missing, xml_handled(b"<response><returncode>FAILED</returncode><messageKey>notFound"
                                           b"</messageKey></response>", call="getMeetingInfo", checksum="ok",
                                           route="routed", server="bbb1", result="notFound"), 0.1)
    assert missing.marked == ":red_circle:" and missing.comment == "getMeetingInfo → bbb1 notFound"
    merged = xml_handled(b"<response><returncode>SUCCESS</returncode></response>", call="getMeetings",
                        checksum="ok", route="merged", result="SUCCESS",
                        backend=[{"server": "bbb1", "status": 200}, {"server": "bbb2", "error": "timed out"}])
    assert describe(merged) == "getMeetings merged from bbb1, bbb2 failed SUCCESS"


def test_annotate_adds_backend_calls_to_mitmweb_view_without_their_checksum():
    annotate = Annotate(BbbLoadBalancer())
    v = view.View()
    flow = api_flow()
    with taddons.context(v, annotate) as tctx:
        annotate.running()
        annotate.on_answer(flow, create_answer(), 5.0)
        children = [f for f in v if f.metadata.get("bbb_backend_of") == flow.id]
        assert len(children) == 1
        child = children[0]
        assert child.request.method == "GET" and child.response and child.response.status_code == 200
        assert child.request.url.endswith("/create?meetingID=room-1&checksum=<redacted>")
        assert child.comment == "backend call for create"
        tctx.configure(annotate, bbb_show_backend_calls=False)
        annotate.on_answer(api_flow(), create_answer(), 5.0)
        assert len(v) == 1


async def test_capture_writes_rotates_masks_and_keeps_only_our_metadata(tmp_path: Path):
    capture = Capture()
    path = tmp_path / "cap.flows"
    with taddons.context(capture) as tctx:
        tctx.configure(capture, bbb_save_file=str(path), bbb_save_max_mb="0.001", bbb_save_keep=2,
                       bbb_mask_passwords=True)
        capture.running()
        annotate = Annotate(BbbLoadBalancer())
        live = []
        for i in range(12):
            flow = api_flow(f"meetingID=m{i}&moderatorPW=mp&checksum=" + "a" * 40)
            flow.response = http.Response.make(302, b"", {"Location": "http://b/join?password=mp&checksum=x"})
            annotate.on_answer(flow, create_answer(), 1.0)
            flow.metadata["other_addon"] = "anything"
            capture.response(flow)
            live.append(flow)
        await capture.done()
    assert "moderatorPW=mp" in live[0].request.path  # the live flow is untouched
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cap.flows", "cap.flows.1", "cap.flows.2"]
    flows = []
    for name in files:
        data = (tmp_path / name).read_bytes()
        assert b"moderatorPW=mp" not in data and b"password=mp" not in data and b"other_addon" not in data
        with open(tmp_path / name, "rb") as f:
            flows += list(io.FlowReader(f).stream())
    assert 0 < len(flows) < 12  # the oldest rotated file was dropped
    for flow in flows:
        assert "moderatorPW=***" in flow.request.path
        assert flow.response.headers["Location"] == "http://b/join?password=***&checksum=x"
        assert set(flow.metadata) == {"bbb"} and flow.metadata["bbb"]["server"] == "bbb2"
