"""Calls to the BBB servers on behalf of a client: re-signed, recorded on the trace, answers checked.

``forward`` sends one call, ``relay`` turns a backend answer into the client's (never an error page),
``routed`` is both, and ``fan_out`` asks many servers at once, leaving out the broken ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lxml import etree

from lb_core import bbbxml, errors
from lb_core.api import Answer, Call
from lb_core.backend import BackendClient, BackendError, BackendReply
from lb_core.config import Config
from lb_core.pool import Pool, Server
from lb_core.query import RawQuery
from lb_core.trace import Trace


def is_success(root: etree._Element) -> bool:
    return bbbxml.returncode(root) == "SUCCESS"


class Forwarder:
    def __init__(self, config: Config, pool: Pool, backend: BackendClient) -> None:
        self.config = config
        self.pool = pool
        self.backend = backend

    async def forward(self, server: Server, call: Call, trace: Trace, query: RawQuery | None = None,
                      *, body: bytes | None = None, content_type: str | None = None,
                      timeout_s: float | None = None) -> BackendReply:
        """Send the call to ``server`` re-signed with its secret; record it on the trace."""
        query = query if query is not None else call.query
        forward_body = body if body is not None else call.body
        method = "POST" if forward_body else "GET"
        try:
            reply = await self.backend.call(
                server.config, call.name, query.text, method=method, body=forward_body,
                content_type=content_type or (call.content_type_header if forward_body else None),
                timeout_s=timeout_s,
            )
        except BackendError as exc:
            trace.backend.append({"server": server.name, "call": call.name, "error": str(exc)})
            raise
        trace.backend.append({"server": server.name, "call": call.name, "status": reply.status,
                              "ms": round(reply.elapsed_ms, 2), "url": reply.url_without_checksum})
        trace.server = server.name
        return reply

    @staticmethod
    def relay(reply: BackendReply, trace: Trace, *, json: bool = False) -> tuple[Answer, etree._Element | None]:
        """Pass a backend answer back, as long as it is an API answer and not an error page."""
        trace.route = trace.route if trace.route != "local" else "routed"
        content_type = reply.headers.get("Content-Type", "")
        if json and "json" in content_type and reply.status < 500:
            trace.result = "SUCCESS" if b'"SUCCESS"' in reply.body else "FAILED"
            return Answer(reply.status, reply.body, {"Content-Type": content_type}), None
        if reply.status >= 400 or not reply.body.lstrip().startswith(b"<"):
            raise errors.backend_error(
                f"The BigBlueButton server answered HTTP {reply.status} instead of an API response.")
        try:
            root = bbbxml.parse(reply.body)
        except bbbxml.XmlError:
            raise errors.backend_error() from None
        trace.result = bbbxml.text_of(root, "messageKey") or bbbxml.returncode(root) or "SUCCESS"
        return Answer(200, reply.body, dict(bbbxml.XML_HEADERS)), root

    async def routed(self, server: Server, call: Call, trace: Trace, query: RawQuery | None = None, *,
                     json: bool = False, **kwargs: Any) -> tuple[Answer, etree._Element | None]:
        """Forward and relay; a server that cannot be reached is BBB's serverUnavailable/serverTimeout."""
        try:
            reply = await self.forward(server, call, trace, query, **kwargs)
        except BackendError as exc:
            raise errors.backend_timeout() if exc.timeout else errors.server_unavailable() from None
        return self.relay(reply, trace, json=json)

    def fan_out_servers(self) -> list[Server]:
        """Every server that may hold meetings or recordings and is not known to be dead."""
        return [s for s in self.pool if s.healthy]

    async def fan_out(self, call_name: str, query: RawQuery, trace: Trace,
                      servers: list[Server] | None = None) -> list[tuple[Server, etree._Element]]:
        """Ask servers concurrently; one that is down, slow or broken is left out, not fatal."""
        servers = self.fan_out_servers() if servers is None else servers
        timeout = self.config.monitor.timeout_s

        async def one(server: Server) -> tuple[Server, etree._Element] | None:
            started = time.perf_counter()
            try:
                reply = await self.backend.call(server.config, call_name, query.text, timeout_s=timeout)
                root = bbbxml.parse(reply.body)
            except (BackendError, bbbxml.XmlError) as exc:
                trace.backend.append({"server": server.name, "call": call_name, "error": str(exc)[:200]})
                return None
            trace.backend.append({"server": server.name, "call": call_name, "status": reply.status,
                                  "ms": round((time.perf_counter() - started) * 1000, 2)})
            if not is_success(root):
                return None
            return server, root

        results = await asyncio.gather(*(one(s) for s in servers))
        trace.route = "merged"
        return [r for r in results if r is not None]
