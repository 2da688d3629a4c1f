"""The load balancer's API: one entry point that turns a request into an answer and its trace.

The mitmproxy addon hands every request to ``Gateway.handle``; nothing here knows of mitmproxy. The
gateway only dispatches: the verifier says who signed, the registry (``lb_core.handlers``) which
handler answers, and the handler does the rest.
"""

from __future__ import annotations

import logging

from lb_core import bbbxml, errors
from lb_core.api import API_PREFIX, CALLBACK_PREFIX, Answer, Request
from lb_core.callbacks import Callbacks
from lb_core.config import Config
from lb_core.errors import ApiError, ChecksumError
from lb_core.handlers import CALLS
from lb_core.handlers.context import Context, Services
from lb_core.recording_http import RecordingDoors
from lb_core.store import StoreError
from lb_core.trace import Handled, Trace
from lb_core.verify import Verifier
from lb_core.version import VERSION, revision

log = logging.getLogger("bbb_lb.gateway")


class Gateway:
    """Dispatches each request: callbacks, the version answer, or a verified call to its handler."""

    def __init__(self, config: Config, verifier: Verifier, services: Services,
                 callbacks: Callbacks | None = None, recording_doors: RecordingDoors | None = None) -> None:
        self.config = config
        self.verifier = verifier
        self.services = services
        self.callbacks = callbacks
        self.recording_doors = recording_doors  # uploads and playback on the API port

    async def handle(self, request: Request) -> Handled:
        trace = Trace()
        try:
            answer = await self._handle(request, trace)
        except ApiError as error:
            answer = self._refused(error, trace)
        except StoreError as exc:  # Redis down or slow: one line in the log, one FAILED answer, no traceback
            log.warning("%s %s: %s", errors.store_unavailable().message_key, request.path, exc)
            answer = self._refused(errors.store_unavailable(), trace)
        except Exception:  # the last line of defence: never a traceback to the client
            log.exception("unexpected error handling %s", request.path)
            answer = self._refused(errors.internal_error(), trace)
        return Handled(answer, trace)

    @staticmethod
    def _refused(error: ApiError, trace: Trace) -> Answer:
        trace.result = error.message_key
        if isinstance(error, ChecksumError):
            trace.checksum = error.verdict
        return Answer.error(error)

    async def _handle(self, request: Request, trace: Trace) -> Answer:
        path = request.path
        if self.recording_doors is not None and self.recording_doors.handles(path):
            return await self.recording_doors.handle(request, trace)
        if path.startswith(CALLBACK_PREFIX) and self.callbacks is not None:
            return await self.callbacks.handle(request, trace)
        if path in (API_PREFIX, API_PREFIX + "/"):
            return self.version(trace)
        if not path.startswith(API_PREFIX + "/"):
            raise ApiError("notFound", "There is no BigBlueButton API at this address.", 404)
        name = path[len(API_PREFIX) + 1:].removesuffix(".xml")
        spec = CALLS.get(name)
        if spec is None:
            trace.call = name[:64]
            raise errors.unsupported_request()
        trace.call = name
        if request.method not in spec.methods:
            # bbb-web has no route for this method: nothing is done, whatever the checksum.
            answer = self._refused(ApiError("unsupportedRequest", "This HTTP method is not supported.", 405), trace)
            answer.headers["Allow"] = ", ".join(sorted(spec.methods))
            return answer
        if len(request.body) > self.config.max_body_bytes:
            raise errors.request_too_large()
        call = self.verifier.signed(spec, request)
        trace.integration = call.integration.name
        trace.checksum = "ok"
        trace.meeting_id = call.param("meetingID")
        call = self.verifier.verify_signed(call)
        meetings = self.services.meetings
        if meetings.cluster is not None and trace.meeting_id and name != "create":
            # Several processes share the meetings: the one asked reads the store, not its own memory.
            await meetings.refresh(call.integration.name, trace.meeting_id)
        return await spec.handler(Context(call, trace, spec, self.services))

    @staticmethod
    def version(trace: Trace) -> Answer:
        trace.call, trace.result = "version", "SUCCESS"
        return Answer.xml(bbbxml.success([
            ("version", "2.0"), ("apiVersion", "2.0"), ("bbbVersion", ""),
            ("custom", [("name", "bbb-lb"), ("version", VERSION), ("deploy", 1), ("revision", revision())]),
        ]))
