"""Callbacks through the LB: BBB calls the LB, the LB learns from it and calls the integration.

A create's ``meta_endCallbackUrl`` and ``meta_*-recording-ready-url`` are replaced by LB URLs
carrying an unguessable token. The end callback tells the LB at once that a meeting ended; the
recording-ready JWT, signed by the backend with its own secret, is verified and signed anew with
the integration's secret, which is the only one the integration knows. Deliveries are stored and
retried with backoff, so an integration that is down, or an LB restart, loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jwt

from lb_core import bbbxml, errors
from lb_core.api import CALLBACK_PREFIX, Answer, Call, Request
from lb_core.integrations import Integrations
from lb_core.meetings import MeetingRecord
from lb_core.outbound import DeliveryFailed, OutboundClient, TargetRefused, describe_target
from lb_core.pool import Pool
from lb_core.query import RawQuery, encode_value
from lb_core.store import Store
from lb_core.trace import Trace

log = logging.getLogger("bbb_lb.callbacks")

CALLBACKS_TABLE = "callbacks"
DELIVERIES_TABLE = "deliveries"
END_KEY = "endcallbackurl"
RECORDING_READY_KEYS = ("bbb-recording-ready-url", "bn-recording-ready-url", "canvas-recording-ready-url")
RETRY_DELAYS_S = (1, 2, 5, 10, 30, 60, 120, 300, 600)
GIVE_UP_STATUSES = {401, 404, 410}
# bbb-web's recording-ready script (and Scalelite) sign HS256; a token is never trusted to choose.
RECORDING_READY_ALGORITHM = "HS256"
# The BBB and integration secrets are whatever their operators chose: a short one is not ours to warn about.
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)


def verify_recording_ready(token: str, secret: str) -> dict[str, Any]:
    """The payload of a recording-ready JWT signed with ``secret``; raises ``jwt.PyJWTError`` otherwise.

    HS256 only, whatever the header says (so no ``alg: none``, no key confusion); ``exp`` and ``nbf``
    are checked when present (bbb-web sends neither).
    """
    return jwt.decode(token, secret, algorithms=[RECORDING_READY_ALGORITHM])


def sign_recording_ready(payload: dict[str, Any], secret: str) -> str:
    """The JWT an integration expects from its BBB server: HS256 with the integration's secret."""
    return jwt.encode(payload, secret, algorithm=RECORDING_READY_ALGORITHM)


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
    def __init__(self, store: Store, pool: Pool, public_url: str, integrations: Integrations,
                 meeting_ended: Callable[[str, str, str], Awaitable[bool]],
                 retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S, *, outbound: OutboundClient) -> None:
        """``meeting_ended``: asks the meeting's server whether it ended, and forgets it if so
        (``MeetingLifecycle.meeting_ended``)."""
        self.store = store
        self.outbound = outbound  # the integrations' own pool: never the backend one
        self.pool = pool
        self.public_url = public_url.rstrip("/")
        self.integrations = integrations
        self.meeting_ended = meeting_ended
        self.retry_delays_s = retry_delays_s
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered_total = 0
        self.failed_total = 0

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
                await self.outbound.check(url)
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
        await self._deliver_later({"method": "GET", "url": url, "integration": doc["integration"],
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
        await self._deliver_later({
            "method": "POST", "url": doc["url"], "integration": doc["integration"], "what": "recording-ready",
            "payload": {"meeting_id": doc["meeting_id"], "record_id": payload.get("record_id", "")},
        })
        return (200, "SUCCESS", "Callback received.")

    # --- the LB calls the integration ----------------------------------------------------------------

    async def _deliver_later(self, delivery: dict[str, Any]) -> None:
        key = secrets.token_hex(12)
        delivery = {**delivery, "attempts": 0}
        await self.store.put(DELIVERIES_TABLE, key, delivery)
        self._spawn(key, delivery)

    def _spawn(self, key: str, delivery: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(key, delivery), name=f"callback-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Deliveries stored before a restart are tried again."""
        for key, delivery in (await self.store.all(DELIVERIES_TABLE)).items():
            self._spawn(key, delivery)

    async def _deliver(self, key: str, delivery: dict[str, Any]) -> None:
        attempts = int(delivery.get("attempts", 0))
        target = describe_target(delivery["url"])  # logs name the host only: the URL may carry tokens
        while True:
            try:
                status, failure = await self._attempt(delivery)
            except TargetRefused as exc:  # e.g. its name now resolves to a private address: never retried
                self.failed_total += 1
                log.warning("%s to integration %s dropped: %s is refused: %s", delivery["what"],
                            delivery["integration"], target, exc)
                break
            attempts += 1
            if status is not None and 200 <= status < 300:
                self.delivered_total += 1
                log.info("%s delivered to integration %s (attempt %d)", delivery["what"], delivery["integration"],
                         attempts)
                break
            if (status in GIVE_UP_STATUSES) or attempts > len(self.retry_delays_s):
                self.failed_total += 1
                log.warning("%s to integration %s at %s given up after %d attempts (last: %s)", delivery["what"],
                            delivery["integration"], target, attempts, status or failure or "no answer")
                break
            await self.store.put(DELIVERIES_TABLE, key, {**delivery, "attempts": attempts})
            await asyncio.sleep(self.retry_delays_s[attempts - 1])
        await self.store.delete(DELIVERIES_TABLE, key)

    async def _attempt(self, delivery: dict[str, Any]) -> tuple[int | None, str]:
        """(HTTP status, "") or (None, why it failed); TargetRefused when the target is not allowed."""
        try:
            if delivery["method"] == "GET":
                return await self.outbound.send(delivery["url"]), ""
            integration = self.integrations.get(delivery["integration"])
            if integration is None:
                return 410, ""
            signed = sign_recording_ready(delivery["payload"], integration.secrets[0])
            return await self.outbound.send(delivery["url"], method="POST", data={"signed_parameters": signed}), ""
        except DeliveryFailed as exc:
            return None, str(exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.outbound.close()
