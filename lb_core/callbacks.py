"""Callbacks through the LB: BBB calls the LB, the LB learns from it and calls the integration.

A create's ``meta_endCallbackUrl`` and ``meta_*-recording-ready-url`` are replaced by LB URLs
carrying an unguessable token. The end callback tells the LB at once that a meeting ended; the
recording-ready JWT, signed by the backend with its own secret, is verified and signed anew with
the integration's secret, which is the only one the integration knows. What the LB then sends the
integration is ``deliveries.Deliveries``' job (stored, retried with backoff).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jwt

from lb_core import bbbxml, errors
from lb_core.api import CALLBACK_PREFIX, Answer, Call, Request
from lb_core.deliveries import Deliveries, verify_recording_ready
from lb_core.meetings import MeetingRecord
from lb_core.outbound import TargetRefused
from lb_core.pool import Pool
from lb_core.query import RawQuery, encode_value
from lb_core.store import Store
from lb_core.trace import Trace

log = logging.getLogger("bbb_lb.callbacks")

CALLBACKS_TABLE = "callbacks"
END_KEY = "endcallbackurl"
RECORDING_READY_KEYS = ("bbb-recording-ready-url", "bn-recording-ready-url", "canvas-recording-ready-url")


@dataclass(frozen=True, slots=True)
class PendingCallback:
    """A callback URL the LB took out of a create, to be stored once the create succeeded."""

    token: str
    kind: str  # "end" or "recording"
    param: str  # the create parameter as the client spelled it
    url: str


# What the LB answers BBB's call: HTTP status, messageKey, message.
Outcome = tuple[int, str, str]


class Callbacks:
    """Takes callback URLs out of creates, and answers BBB's calls to the LB's own callback URLs."""

    def __init__(self, store: Store, pool: Pool, public_url: str,
                 meeting_ended: Callable[[str, str, str], Awaitable[bool]], deliveries: Deliveries,
                 on_recording_ready: Callable[[str], None] | None = None) -> None:
        """``meeting_ended``: asks the meeting's server whether it ended, and forgets it if so
        (``MeetingLifecycle.meeting_ended``); ``on_recording_ready``: a server has a new recording
        (``RecordingSync.sync_soon``)."""
        self.store = store
        self.pool = pool
        self.public_url = public_url.rstrip("/")
        self.meeting_ended = meeting_ended
        self.deliveries = deliveries
        self.on_recording_ready = on_recording_ready

    # --- on create ----------------------------------------------------------------------------------

    @staticmethod
    def callback_params(call: Call) -> list[tuple[str, str, str]]:
        """(kind, parameter, URL) of each callback URL a create carries."""
        found: list[tuple[str, str, str]] = []
        for key, value in call.pairs:
            lowered = key.lower()
            if not lowered.startswith("meta_") or not value:
                continue
            meta = lowered[5:]
            if meta == END_KEY:
                found.append(("end", key, value))
            elif meta in RECORDING_READY_KEYS:
                found.append(("recording", key, value))
        return found

    async def check_create(self, call: Call) -> None:
        """A create whose callback URL the LB would refuse to call is refused now, where the integration
        sees it (invalidParameters), rather than dropped silently when the meeting ends."""
        for _, key, url in self.callback_params(call):
            try:
                await self.deliveries.outbound.check(url)
            except TargetRefused as exc:
                raise errors.invalid_parameter(f"{key} is refused: {exc}") from None

    def rewrite_create(self, call: Call, query: RawQuery) -> tuple[RawQuery, list[PendingCallback]]:
        """Replace the integration's callback URLs with the LB's own."""
        pending: list[PendingCallback] = []
        for kind, key, value in self.callback_params(call):
            token = secrets.token_urlsafe(24)
            pending.append(PendingCallback(token, kind, key, value))
            query = query.replaced(key, f"{self.public_url}{CALLBACK_PREFIX}{kind}/{token}")
        return query, pending

    async def remember(self, pending: list[PendingCallback], record: MeetingRecord) -> None:
        for callback in pending:
            await self.store.put(CALLBACKS_TABLE, callback.token, {
                "kind": callback.kind, "url": callback.url, "integration": record.integration,
                "meeting_id": record.meeting_id, "server": record.server, "created": time.time(),
            })

    async def recording_imported(self, recording: dict[str, Any]) -> None:
        """A recording imported into the LB's storage: its recording-ready callbacks fire now, once.

        The meeting's metadata holds the LB's own callback URLs (the create was rewritten); each names
        the integration's URL, which gets the JWT signed with the integration's secret.
        """
        prefix = f"{self.public_url}{CALLBACK_PREFIX}recording/"
        for key in RECORDING_READY_KEYS:
            url = recording.get("metadata", {}).get(key, "")
            if not url.startswith(prefix):
                continue
            token = url[len(prefix):]
            doc = await self.store.get(CALLBACKS_TABLE, token) if token and "/" not in token else None
            if doc is None or doc.get("kind") != "recording" or doc.get("fired"):
                continue
            if doc.get("integration") != recording.get("integration"):
                continue
            await self.store.put(CALLBACKS_TABLE, token, {**doc, "fired": True})
            await self.deliveries.later({
                "method": "POST", "url": doc["url"], "integration": doc["integration"], "what": "recording-ready",
                "payload": {"meeting_id": doc["meeting_id"], "record_id": recording["record_id"]},
            })

    # --- BBB calls the LB ----------------------------------------------------------------------------

    async def handle(self, request: Request, trace: Trace) -> Answer:
        status, key, message = await self._handle(request)
        trace.call, trace.result = "callback", key
        body = bbbxml.failed(key, message) if status >= 400 else bbbxml.success([("message", message)])
        return Answer.xml(body, status)

    async def _handle(self, request: Request) -> Outcome:
        rest = request.path[len(CALLBACK_PREFIX):]
        kind, _, token = rest.partition("/")
        doc = await self.store.get(CALLBACKS_TABLE, token) if token and "/" not in token else None
        if doc is None or doc.get("kind") != kind:
            return (404, "notFound", "Unknown callback.")
        if kind == "end":
            return await self._end(doc, token, request)
        return await self._recording_ready(doc, request)

    async def _end(self, doc: dict[str, Any], token: str, request: Request) -> Outcome:
        """Anyone who saw the meeting's metadata knows this URL: the server must confirm the end first.

        Unconfirmed, nothing is forgotten or relayed and the token stays for the real callback. The
        integration gets the meeting's own ID (not the caller's query) and BBB's recordingmarks flag.
        """
        if not await self.meeting_ended(doc["integration"], doc["meeting_id"], doc["server"]):
            log.warning("end callback for meeting %s of %s not confirmed by %s: ignored", doc["meeting_id"],
                        doc["integration"], doc["server"])
            return (409, "notEnded", "The meeting's server does not confirm that it ended.")
        marks = dict(parse_qsl(request.raw_query)).get("recordingmarks", "")
        query = "meetingID=" + encode_value(doc["meeting_id"])
        if marks in ("true", "false"):
            query += "&recordingmarks=" + marks
        url = doc["url"]
        url += ("&" if "?" in url else "?") + query
        await self.deliveries.later({"method": "GET", "url": url, "integration": doc["integration"],
                                   "what": "end callback"})
        await self.store.delete(CALLBACKS_TABLE, token)
        return (200, "SUCCESS", "Callback received.")

    async def _recording_ready(self, doc: dict[str, Any], request: Request) -> Outcome:
        fields = dict(parse_qsl(request.body.decode("utf-8", "replace"))) if request.body else {}
        token = fields.get("signed_parameters") or dict(parse_qsl(request.raw_query)).get("signed_parameters", "")
        server = self.pool.get(doc["server"])
        if not token or server is None:
            return (401, "invalidSignature", "The callback is not signed by the meeting's server.")
        try:
            payload = verify_recording_ready(token, server.config.secret)
        except jwt.PyJWTError:
            return (401, "invalidSignature", "The callback is not signed by the meeting's server.")
        if payload.get("meeting_id") != doc["meeting_id"]:
            return (401, "invalidSignature", "The callback is for another meeting.")
        if self.on_recording_ready is not None:
            self.on_recording_ready(doc["server"])  # the index learns of the recording now, not at the next sync
        if doc.get("fired"):  # the LB fired it already, after importing the recording
            return (200, "SUCCESS", "Callback received.")
        await self.deliveries.later({
            "method": "POST", "url": doc["url"], "integration": doc["integration"], "what": "recording-ready",
            "payload": {"meeting_id": doc["meeting_id"], "record_id": payload.get("record_id", "")},
        })
        return (200, "SUCCESS", "Callback received.")
