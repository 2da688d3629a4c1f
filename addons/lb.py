"""The load balancer as a mitmproxy addon: every request is answered by lb_core's gateway.

Loads into ``bbb-lb run`` and into stock mitmdump/mitmweb (``-s addons/bbb_lb.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import ctx, exceptions, http

from addons.limits import BODY_LIMIT, SPOOL, Spool, UploadThrottle, answer_and_close
from lb_core import bbbxml, errors, logs
from lb_core import config as lb_config
from lb_core.api import API_PREFIX, Answer, Request
from lb_core.errors import ApiError, request_too_large
from lb_core.handlers import CALLS, is_upload
from lb_core.recording_http import UPLOAD_PATH
from lb_core.recording_imports import UploadRefused
from lb_core.service import LoadBalancer
from lb_core.store import Store
from lb_core.trace import Handled, Trace

log = logging.getLogger(logs.ACCESS_LOGGER)


class BbbLoadBalancer:
    """Owns the running LoadBalancer; turns flows into gateway calls and answers into responses."""

    def __init__(self) -> None:
        self.config: lb_config.Config | None = None
        self.lb: LoadBalancer | None = None
        self.store: Store | None = None  # opened (and locked) by ``bbb-lb run`` before the proxy starts
        self._starting: asyncio.Lock | None = None
        self._upload_throttle: UploadThrottle | None = None  # shared by every recording upload
        self.on_answer: list = []  # other addons (annotations, metrics) see each answer and its trace
        self.in_flight = 0  # API calls being answered: a graceful stop waits for them
        self.stopping = False  # set once the LB stops: a late call is refused, never starts it again
        self._idle: asyncio.Event | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("bbb_config", str, "", "Path of the bbb-lb YAML configuration file.")
        loader.add_option("bbb_poll", bool, True, "Poll the BBB servers for health and load.")

    def configure(self, updated: set[str]) -> None:
        if "bbb_config" in updated and ctx.options.bbb_config:
            if self.lb is not None:
                raise exceptions.OptionsError("bbb_config cannot change while bbb-lb runs; restart it")
            try:
                self.config = lb_config.load(ctx.options.bbb_config)
            except lb_config.ConfigError as exc:
                raise exceptions.OptionsError(str(exc)) from None

    async def running(self) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> LoadBalancer:
        if self.lb is not None:
            return self.lb
        if self.config is None:
            raise exceptions.OptionsError("set bbb_config to the bbb-lb YAML file (--set bbb_config=config.yaml)")
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            if self.lb is None:
                self.lb = await LoadBalancer.start(self.config, self.store, poll=ctx.options.bbb_poll)
        return self.lb

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse what is too large from the head alone, before a byte of the body is read."""
        if flow.response or not flow.live or self.config is None or flow.request.method == "CONNECT":
            return
        limits = self.config.limits
        path, _, raw_query = flow.request.path.partition("?")
        if path == UPLOAD_PATH:
            self._recording_upload_headers(flow)
            return
        call = path[len(API_PREFIX) + 1:].removesuffix(".xml") if path.startswith(API_PREFIX + "/") else ""
        headers = flow.request.headers
        upload = is_upload(call)
        error: ApiError | None = None
        if len(raw_query) > limits.max_query_bytes:
            error = request_too_large()
        elif "transfer-encoding" not in headers:  # a chunked body is measured as it streams in
            length = headers.get("content-length", "").strip()
            if length.isdigit() and int(length) > limits.body_limit(upload):
                error = request_too_large()
        if error is None and upload and not _small_body(headers, limits.max_body_bytes):
            error = self._unsigned_upload(flow, call, raw_query)
        if error is not None:
            handled = refused(error, call[:64])
            answer = handled.answer
            response = http.Response.make(answer.status, answer.body, answer.headers)
            if answer_and_close(flow, response):
                self.log_answer(flow, handled, 0.0)
            else:
                self.answer(flow, handled, 0.0)
            return
        # Checked again as the body streams in: a chunked body has no length to judge by here.
        flow.metadata[BODY_LIMIT] = limits.body_limit(upload)

    def _recording_upload_headers(self, flow: http.HTTPFlow) -> None:
        """A recording upload: the server's token and the size are judged from the head, and the body is
        written to a spool file as it arrives (never held in memory), up to recordings.max_upload_bytes."""
        imports = self.lb.recording_imports if self.lb is not None else None
        if imports is None:  # not started yet: the gateway answers once the (small) body is in
            flow.metadata[BODY_LIMIT] = self.config.limits.max_body_bytes if self.config is not None else 0
            return
        refusal: UploadRefused | None = None
        try:
            if flow.request.method != "POST":
                raise UploadRefused(405, "unsupportedRequest", "Uploads are POSTed.")
            imports.authorize(flow.request.headers.get("authorization", ""))
            length = flow.request.headers.get("content-length", "").strip()
            if length.isdigit() and int(length) > imports.settings.max_upload_bytes:
                raise UploadRefused(413, "requestTooLarge", "The archive is larger than recordings.max_upload_bytes.")
        except UploadRefused as exc:
            refusal = exc
        if refusal is not None:
            handled = Handled(Answer.xml(bbbxml.failed(refusal.key, str(refusal)), refusal.status),
                              Trace(call="recordingUpload", result=refusal.key))
            response = http.Response.make(handled.answer.status, handled.answer.body, handled.answer.headers)
            if answer_and_close(flow, response):
                self.log_answer(flow, handled, 0.0)
            else:
                self.answer(flow, handled, 0.0)
            return
        if self._upload_throttle is None:
            self._upload_throttle = UploadThrottle(imports.settings.upload_rate_limit)
        flow.metadata[SPOOL] = Spool(str(imports.new_spool_file()), imports.settings.max_upload_bytes,
                                     self._upload_throttle)

    def _unsigned_upload(self, flow: http.HTTPFlow, call: str, raw_query: str) -> ApiError | None:
        """A large upload is read only for a caller whose query checksum verifies: checked from the head alone.

        Bodies up to ``limits.max_body_bytes`` may still carry the checksum themselves (form POSTs);
        past that, an anonymous client could make the LB read and hold megabytes before being refused.
        """
        spec = CALLS.get(call)
        if self.lb is None or self.lb.gateway is None or spec is None:
            return None
        request = Request(method=flow.request.method, path=API_PREFIX + "/" + call, raw_query=raw_query,
                          headers=flow.request.headers, body=b"", client_ip="")
        try:
            self.lb.gateway.verifier.signed(spec, request)
        except ApiError as error:
            return error
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if self.stopping:
            self.answer(flow, refused(errors.stopping()), time.perf_counter())
            return
        self.in_flight += 1
        try:
            await self._request(flow)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def drained(self, timeout_s: float, quiet_s: float = 0.25) -> int:
        """Wait until no API call has been answered for ``quiet_s`` (a connection accepted just before the
        listener closed may not have sent its request yet), at most ``timeout_s``; answers how many still are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            if self.in_flight:
                self._idle = asyncio.Event()
                try:
                    await asyncio.wait_for(self._idle.wait(), left)
                except TimeoutError:
                    break
            await asyncio.sleep(min(quiet_s, max(deadline - loop.time(), 0)))
            if not self.in_flight:
                break
        return self.in_flight

    async def _request(self, flow: http.HTTPFlow) -> None:
        started = time.perf_counter()
        lb = await self.ensure_started()
        assert lb.gateway is not None
        try:
            path, _, raw_query = flow.request.data.path.decode("utf-8").partition("?")
        except UnicodeDecodeError:  # raw bytes that are not UTF-8: nothing to route or verify
            self.answer(flow, refused(errors.invalid_parameter("the URL is not valid UTF-8")), started)
            return
        spool: Spool | None = flow.metadata.get(SPOOL)
        if spool is not None:
            spool.close()
        request = Request(
            method=flow.request.method,
            path=path,
            raw_query=raw_query,
            headers=flow.request.headers,  # case-insensitive already; copying it cost ~5% per request
            body=flow.request.get_content(strict=False) or b"",
            client_ip=flow.client_conn.peername[0] if flow.client_conn.peername else "",
            spool=spool.path if spool is not None else None,
        )
        self.answer(flow, await lb.gateway.handle(request), started)

    def error(self, flow: http.HTTPFlow) -> None:
        """A connection lost mid-upload (a truncated archive): its spool file goes, nothing is imported."""
        spool: Spool | None = flow.metadata.pop(SPOOL, None)
        if spool is not None:
            spool.discard()

    def answer(self, flow: http.HTTPFlow, handled: Handled, started: float) -> None:
        answer = handled.answer
        flow.response = http.Response.make(answer.status, answer.body, answer.headers)
        self.log_answer(flow, handled, started)

    def log_answer(self, flow: http.HTTPFlow, handled: Handled, started: float) -> None:
        flow.metadata["bbb_local"] = True
        elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        trace = handled.trace
        log.info("call=%s integration=%s meetingID=%s server=%s route=%s result=%s status=%d ms=%.1f",
                 trace.call or "-", trace.integration or "-", _quote(trace.meeting_id), trace.server or "-",
                 trace.route, trace.result or "-", handled.answer.status, elapsed_ms)
        for listener in self.on_answer:
            listener(flow, handled, elapsed_ms)

    async def done(self) -> None:
        self.stopping = True
        if self.lb is not None:
            await self.lb.stop()
            self.lb = None


def refused(error: ApiError, call: str = "") -> Handled:
    """An answer given before the gateway: the error, with a trace that names the call."""
    return Handled(Answer.error(error), Trace(call=call, result=error.message_key))


def _small_body(headers: http.Headers, limit: int) -> bool:
    length = headers.get("content-length", "").strip()
    return "transfer-encoding" not in headers and (not length or (length.isdigit() and int(length) <= limit))


def _quote(value: str) -> str:
    if not value:
        return "-"
    value = value[:120].replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"' if any(c.isspace() or c == "=" for c in value) else value
