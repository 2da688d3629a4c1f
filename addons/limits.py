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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection, ctx, http, tls
from mitmproxy.net.http import http1, status_codes
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1

from lb_core import bbbxml, errors
from lb_core.config_sections import LimitsConfig

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


DISCARD_BODY = "bbb_discard_body"  # flow.metadata: the answer went out, the body is read and dropped
BODY_LIMIT = "bbb_body_limit"  # flow.metadata: the most body bytes this request may bring


def answer_and_close(flow: http.HTTPFlow, response: http.Response) -> bool:
    """Send ``response`` now, before the request body is read; drop the body as it comes, then close.

    mitmproxy sends an answer set in ``requestheaders`` only after buffering the whole body, and
    closing at once would reset the connection under a client still sending (it would never see the
    answer). So the answer is written straight away and the rest of the body is read and dropped,
    never held (a lingering close, bounded by ``limits.request_body_timeout_s``). Returns False when the
    connection is not ours to write to (a replayed flow), so the caller can fall back to ``flow.response``.
    """
    handler = _handler_of(flow.client_conn)
    if handler is None or flow.client_conn not in handler.transports or not _body_guard_installed:
        return False
    writer = handler.transports[flow.client_conn].writer
    if writer is None or writer.is_closing():
        return False
    response.headers["Connection"] = "close"
    writer.write(http1.assemble_response(response))
    flow.request.headers.pop("expect", None)  # no "100 Continue" after the final answer
    flow.metadata[DISCARD_BODY] = True
    return True


UPLOAD_BODY_TIMEOUT_S = 3600.0
SPOOL = "bbb_spool"  # flow.metadata: a recording upload's body goes to this Spool, not to memory


UPLOAD_BURST_S = 0.05  # how far ahead of its rate an upload may read before its connection is paused


class UploadThrottle:
    """All recording uploads together are read at most ``rate`` bytes/s (0: no limit).

    Every body chunk costs the event loop a socket read and a spool write (~100 us per 64 KiB): an upload
    arriving as fast as a local link allows takes half the loop, and each API call waits behind a chunk at
    every step. Past the rate, the uploading connection stops being read until its bytes are paid for.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._paid_until = 0.0  # monotonic: when the bytes read so far are within the rate

    def delay(self, size: int, now: float) -> float:
        """Seconds the connection that brought ``size`` more bytes should now rest."""
        if self.rate <= 0:
            return 0.0
        self._paid_until = max(self._paid_until, now) + size / self.rate
        ahead = self._paid_until - now
        return ahead if ahead > UPLOAD_BURST_S else 0.0


def pause_reading(flow: http.HTTPFlow, seconds: float) -> bool:
    """Stop reading the client's connection for ``seconds`` (the kernel's buffers push back on the sender)."""
    handler = _handler_of(flow.client_conn)
    if handler is None or flow.client_conn not in handler.transports:
        return False
    writer = handler.transports[flow.client_conn].writer
    if writer is None or writer.is_closing():
        return False
    transport = writer.transport
    resume = flow.metadata.pop(RESUME, None)
    if resume is not None:
        resume.cancel()
    transport.pause_reading()
    flow.metadata[RESUME] = asyncio.get_running_loop().call_later(seconds, _resume_reading, transport)
    return True


def _resume_reading(transport: asyncio.BaseTransport) -> None:
    if not transport.is_closing():
        transport.resume_reading()  # type: ignore[attr-defined]


RESUME = "bbb_resume_reading"  # flow.metadata: the timer that resumes reading a throttled upload


class Spool:
    """A request body written to a private file chunk by chunk; past ``limit`` it stops and says so."""

    def __init__(self, path: str, limit: int, throttle: UploadThrottle | None = None) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self.throttle = throttle
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: bytes) -> bool:
        """False once the body is past the limit (the file is then removed)."""
        if self._fd is None:
            return False
        self.size += len(data)
        if self.size > self.limit:
            self.discard()
            return False
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


_body_guard_installed = False


def install_body_guard() -> bool:
    """Make mitmproxy's HTTP layer honour a per-flow body limit while a body streams in, and drop bodies.

    mitmproxy's own ``body_size_limit`` is one number for every call and answers with its own page; the
    LB needs a small limit for most calls and a large one for uploads, checked as each chunk arrives.
    Returns whether the guard is in place (False on a mitmproxy whose HTTP layer no longer fits).
    """
    global _body_guard_installed
    stream_class = getattr(http_layer, "HttpStream", None)
    consume = getattr(stream_class, "state_consume_request_body", None)
    if _body_guard_installed or consume is None:
        return _body_guard_installed

    def state_consume_request_body(self, event):  # type: ignore[no-untyped-def]
        flow = self.flow
        if flow.metadata.get(DISCARD_BODY):
            if isinstance(event, http_layer.RequestEndOfMessage):
                # The whole body has been read: the close is clean and the client sees the answer.
                self.client_state = self.state_errored
                yield http_layer.SendHttp(
                    http_layer.ResponseProtocolError(self.stream_id, "answered early", status_codes.NO_RESPONSE),
                    self.context.client)
            return
        spool = flow.metadata.get(SPOOL)
        if spool is not None and isinstance(event, http_layer.RequestData):
            if not spool.write(event.data):
                if not flow.metadata.get(DISCARD_BODY):
                    answer_and_close(flow, http.Response.make(413, bbbxml.failed(
                        "requestTooLarge", "The archive is larger than recordings.max_upload_bytes."),
                        dict(bbbxml.XML_HEADERS)))
            elif spool.throttle is not None:
                rest = spool.throttle.delay(len(event.data), time.monotonic())
                if rest > 0:
                    pause_reading(flow, rest)
            return
        limit = flow.metadata.get(BODY_LIMIT)
        if isinstance(event, http_layer.RequestData) and limit is not None and \
                len(self.request_body_buf) + len(event.data) > limit:
            self.request_body_buf.clear()
            if answer_and_close(flow, http.Response.make(200, errors.request_too_large().to_xml(),
                                                         dict(bbbxml.XML_HEADERS))):
                log.info("call=%s result=requestTooLarge status=200 (body past %d bytes)",
                         flow.request.path.partition("?")[0].rsplit("/", 1)[-1][:64] or "-", limit)
                return
        yield from consume(self, event)

    stream_class.state_consume_request_body = state_consume_request_body
    _body_guard_installed = True
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
        install_body_guard()

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
            # An authorised recording upload (its body spooled: the lb addon ran first and checked the
            # server's token) may take long to arrive (GBs): an hour, however short the API calls' limit.
            upload = flow.metadata.get(SPOOL) is not None
            seconds = max(self.limits.request_body_timeout_s, UPLOAD_BODY_TIMEOUT_S) if upload else \
                self.limits.request_body_timeout_s
            watched.deadline = time.monotonic() + seconds
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
