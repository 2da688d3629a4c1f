"""What one client connection may cost the LB: time, connections, and the answers to garbage.

mitmproxy has no request-head timeout, no idle timeout below its hard-coded 10 minutes and no
connection cap, and its own error pages name it and its version. This addon adds the three limits
over the client_connected/requestheaders/response hooks (closing a connection the way mitmproxy's
inactivity watchdog does) and replaces mitmproxy's protocol-error pages with BBB-style XML answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection, ctx, http, tls
from mitmproxy.net.http import http1
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layers.http import _http1

from lb_core import bbbxml
from lb_core.config import LimitsConfig

log = logging.getLogger("bbb_lb.limits")

_PROTOCOL_ERRORS = {
    400: ("badRequest", "The request could not be read."),
    408: ("requestTimeout", "The request did not arrive in time."),
    413: ("requestTooLarge", "The request is larger than this server accepts."),
    414: ("requestTooLarge", "The request is larger than this server accepts."),
    431: ("requestTooLarge", "The request is larger than this server accepts."),
}


def protocol_error_response(status_code: int, message: str = "") -> bytes:
    """The raw HTTP/1 answer to a request mitmproxy could not parse: BBB-style XML, nothing naming the engine.

    ``message`` (mitmproxy's own wording, which names it and its options) is deliberately not echoed.
    """
    response = http.Response.make(status_code, protocol_error_response_body(status_code),
                                  {**bbbxml.XML_HEADERS, "Connection": "close"})
    return http1.assemble_response(response)


def install_protocol_error_answers() -> None:
    """Make mitmproxy's HTTP/1 layer answer protocol errors (bad request line, smuggling, size) with ours."""
    _http1.make_error_response = protocol_error_response  # type: ignore[assignment]


def _handler_of(client: connection.Client):  # type: ignore[no-untyped-def]
    proxyserver = ctx.master.addons.get("proxyserver")
    return proxyserver.connections.get(client.id) if proxyserver is not None else None


def close_client(client: connection.Client) -> bool:
    """Close a client connection as mitmproxy's own inactivity watchdog does; False when it is gone."""
    handler = _handler_of(client)
    if handler is None or client not in handler.transports or handler.transports[client].handler is None:
        return False
    handler.close_connection(handler.client)
    return True


def answer_and_close(flow: http.HTTPFlow, response: http.Response) -> bool:
    """Send ``response`` now, before the request body is read, then close the connection.

    mitmproxy sends an answer set in ``requestheaders`` only after reading the whole body; an
    oversized body must not be read (or held in memory) at all. Returns False when the connection
    is not ours to write to (e.g. a replayed flow), so the caller can fall back to ``flow.response``.
    """
    handler = _handler_of(flow.client_conn)
    if handler is None or flow.client_conn not in handler.transports:
        return False
    writer = handler.transports[flow.client_conn].writer
    if writer is None or writer.is_closing():
        return False
    response.headers["Connection"] = "close"
    writer.write(http1.assemble_response(response))
    flow.kill()
    return True


@dataclass(slots=True)
class _Watched:
    client: connection.Client
    deadline: float | None  # monotonic; None while the LB itself is working on a request
    waiting_for: str


class ConnectionLimits:
    """Closes slow or idle client connections and refuses connections beyond the configured number."""

    def __init__(self, limits: Callable[[], LimitsConfig | None] = lambda: None) -> None:
        self._limits = limits  # read when used: the configuration is loaded after the chain is built
        self.connections: dict[str, _Watched] = {}
        self.refused = 0
        self.closed = 0
        self._ticker: asyncio.Task[None] | None = None

    @property
    def limits(self) -> LimitsConfig:
        return self._limits() or LimitsConfig()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        install_protocol_error_answers()

    async def running(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._enforce(), name="bbb-lb connection limits")

    async def done(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    # --- hooks -------------------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self.refused += 1
            client.error = "too many client connections"
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("refused a client connection from %s: limits.max_connections=%d reached (%d refused)",
                            _peer(client), self.limits.max_connections, self.refused)
            return
        self.connections[client.id] = _Watched(
            client, time.monotonic() + self.limits.request_head_timeout_s, "a complete request head")

    def client_disconnected(self, client: connection.Client) -> None:
        self.connections.pop(client.id, None)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """A TLS handshake on the plain-HTTP port is closed, never answered with mitmproxy's certificate."""
        client = data.context.client
        if isinstance(client.proxy_mode, mode_specs.ReverseMode):
            log.info("closed a TLS connection from %s on the plain HTTP port", _peer(client))
            data.ignore_connection = True  # no TLS layer, no certificate ...
            client.error = "TLS on the plain HTTP port"
            close_client(client)  # ... and no connection

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        watched = self.connections.get(flow.client_conn.id)
        if watched is None:
            return
        if flow.request.method == "CONNECT" and not flow.response:
            answer_and_close(flow, http.Response.make(
                400, protocol_error_response_body(400), {**bbbxml.XML_HEADERS}))
            return
        if _expects_body(flow.request):
            watched.deadline = time.monotonic() + self.limits.request_body_timeout_s
            watched.waiting_for = "the request body"
        else:
            watched.deadline = None

    def request(self, flow: http.HTTPFlow) -> None:
        watched = self.connections.get(flow.client_conn.id)
        if watched is not None:
            watched.deadline = None

    def response(self, flow: http.HTTPFlow) -> None:
        self._idle(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._idle(flow)

    def _idle(self, flow: http.HTTPFlow) -> None:
        watched = self.connections.get(flow.client_conn.id)
        if watched is not None:
            watched.deadline = time.monotonic() + self.limits.idle_timeout_s
            watched.waiting_for = "a next request"

    # --- enforcement --------------------------------------------------------------------------------

    def expired(self, now: float) -> list[_Watched]:
        return [w for w in self.connections.values() if w.deadline is not None and w.deadline <= now]

    async def _enforce(self) -> None:
        limits = self.limits
        shortest = min(limits.request_head_timeout_s, limits.request_body_timeout_s, limits.idle_timeout_s)
        tick = max(0.05, min(0.5, shortest / 4))
        while True:
            await asyncio.sleep(tick)
            for watched in self.expired(time.monotonic()):
                watched.deadline = None
                if close_client(watched.client):
                    self.closed += 1
                    log.info("closed the connection from %s: no %s in time", _peer(watched.client),
                             watched.waiting_for)


def protocol_error_response_body(status_code: int) -> bytes:
    key, text = _PROTOCOL_ERRORS.get(status_code, ("badRequest", "The request could not be handled."))
    return bbbxml.failed(key, text)


def _expects_body(request: http.Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


def _peer(client: connection.Client) -> str:
    return client.peername[0] if client.peername else "?"
