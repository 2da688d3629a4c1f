"""Put what the load balancer decided onto each flow, so mitmweb and saved flows show it.

``flow.metadata["bbb"]`` carries the facts, ``flow.comment`` one readable line, and ``flow.marked``
flags checksum failures and FAILED answers. In mitmweb the backend calls behind an answer are added
as child flows, so a fan-out or a forwarded call can be inspected next to the client's request.
"""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import connection, ctx, http
from mitmproxy import flow as mflow

from addons.lb import BbbLoadBalancer
from lb_core.safe_errors import redact
from lb_core.trace import Handled, Trace

FAILED_MARK = ":red_circle:"
REDACTED = "checksum=<redacted>"
_FAILED_XML = b"<returncode>FAILED<"


class Annotate:
    """An ``on_answer`` listener of the load balancer addon; cheap enough for every request."""

    def __init__(self, lb: BbbLoadBalancer) -> None:
        self.lb = lb
        self.show_backend_calls = True
        self._view: Any = None  # mitmweb's View addon; None in the lean ``bbb-lb run``
        lb.on_answer.append(self.on_answer)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("bbb_show_backend_calls", bool, True,
                          "In mitmweb, add each backend call behind an answer as a child flow.")

    def configure(self, updated: set[str]) -> None:
        if "bbb_show_backend_calls" in updated:
            self.show_backend_calls = ctx.options.bbb_show_backend_calls

    def running(self) -> None:
        self._view = ctx.master.addons.get("view")

    def on_answer(self, flow: http.HTTPFlow, handled: Handled, elapsed_ms: float) -> None:
        trace = handled.trace
        flow.metadata["bbb"] = {
            "call": trace.call,
            "integration": trace.integration,
            "meetingID": trace.meeting_id,
            "checksum": trace.checksum,
            "route": trace.route,
            "server": trace.server,
            "result": trace.result,
            "ms": round(elapsed_ms, 2),
            "decision": trace.decision,
            "backend": [{**e, "error": redact(str(e["error"]))} if "error" in e else e for e in trace.backend],
        }
        flow.comment = describe(handled)
        if failed(handled):
            flow.marked = FAILED_MARK
        if self._view is not None and self.show_backend_calls and trace.backend:
            self._view.add(self.backend_flows(flow, trace))

    def backend_flows(self, parent: http.HTTPFlow, trace: Trace) -> list[http.HTTPFlow]:
        """One synthetic flow per backend call; the backend's checksum is never shown."""
        now = time.time()
        children = []
        for entry in trace.backend:
            url = self.backend_url(entry)
            if not url:
                continue
            method = entry.get("method") or (
                "POST" if "url" in entry and parent.request.method == "POST" and parent.request.raw_content else "GET")
            try:
                request = http.Request.make(method, url)
            except ValueError:  # a URL mitmproxy cannot parse: the metadata still has it
                continue
            started = now - float(entry.get("ms") or 0.0) / 1000
            request.timestamp_start = request.timestamp_end = started
            client = connection.Client(peername=("127.0.0.1", 0), sockname=("", 0), timestamp_start=started)
            server = connection.Server(address=(request.host, request.port))
            child = http.HTTPFlow(client, server, live=False)
            child.request = request
            if "status" in entry:
                child.response = http.Response.make(int(entry["status"]))
                child.response.timestamp_start = child.response.timestamp_end = now
            else:
                child.error = mflow.Error(redact(str(entry.get("error", "no answer"))))
            child.metadata["bbb_backend_of"] = parent.id
            child.comment = f"backend call for {trace.call or parent.request.path}"
            children.append(child)
        return children

    def backend_url(self, entry: dict[str, Any]) -> str:
        url = entry.get("url")
        if url:
            return f"{url}&{REDACTED}" if "?" in url else f"{url}?{REDACTED}"
        # Fan-out calls record no URL; their query is empty for getMeetings.
        config = self.lb.config
        server = next((s for s in config.servers if s.name == entry.get("server")), None) if config else None
        return f"{server.api_url}{entry.get('call', '')}?{REDACTED}" if server else ""


def failed(handled: Handled) -> bool:
    answer, trace = handled.answer, handled.trace
    if trace.checksum in ("missing", "mismatch") or answer.status >= 400 or trace.result == "FAILED":
        return True
    return answer.body.find(_FAILED_XML, 0, 256) >= 0


def describe(handled: Handled) -> str:
    """One line: call → server (why; candidates) result."""
    trace = handled.trace
    call = trace.call or "request"
    result = handled.result
    if trace.checksum in ("missing", "mismatch"):
        return f"{call} {result} (checksum {trace.checksum})"
    if trace.route == "merged":
        asked = ", ".join(e["server"] if "status" in e else f"{e['server']} failed" for e in trace.backend)
        return f"{call} merged from {asked or 'no server'} {result}"
    target = f" → {trace.server}" if trace.server else f" {trace.route}"
    decision = trace.decision
    if not decision:
        return f"{call}{target} {result}"
    why: list[str] = [str(decision["reason"])] if decision.get("reason") else []
    candidates = decision.get("candidates")
    if candidates:
        why.append(", ".join(
            f"{c['server']} excluded: {c['excluded']}" if c.get("excluded") else f"{c['server']} {c.get('score', '?')}"
            for c in candidates))
    if decision.get("failover"):
        why.append("failover: " + ", ".join(map(str, decision["failover"])))
    if decision.get("replaced"):
        why.append(f"replaced {decision['replaced']}")
    return f"{call}{target} ({'; '.join(why)}) {result}"
