"""What the LB sends integrations (end and recording-ready callbacks): stored, and retried with backoff.

An integration that is down, or an LB restart, loses none; a target the outbound policy refuses is
dropped, never retried. Recording-ready payloads are signed with the integration's current secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import warnings
from typing import TYPE_CHECKING, Any

import jwt

from lb_core.integrations import Integrations
from lb_core.outbound import DeliveryFailed, OutboundClient, TargetRefused, describe_target
from lb_core.store import Store, StoreError

if TYPE_CHECKING:
    from lb_core.cluster import Cluster

log = logging.getLogger("bbb_lb.callbacks")

DELIVERIES_TABLE = "deliveries"
CLAIM = "delivery"  # {prefix}:delivery:{key}: the process delivering it
CLAIM_S = 30.0  # a dead process's deliveries are taken over after this
ADOPT_EVERY_S = 5.0
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


class Deliveries:
    def __init__(self, store: Store, outbound: OutboundClient, integrations: Integrations,
                 retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.store = store
        self.outbound = outbound  # the integrations' own pool: never the backend one
        self.integrations = integrations
        self.retry_delays_s = retry_delays_s
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered_total = 0
        self.failed_total = 0
        # Several processes on one Redis: each delivery is owned by one live process (a claim it renews),
        # and a dead process's deliveries are adopted by another (``adopt_forever``).
        self.cluster: Cluster | None = None
        self._owned: set[str] = set()
        self._adopter: asyncio.Task[None] | None = None

    async def later(self, delivery: dict[str, Any]) -> None:
        """Store the delivery, then try it in the background until it is done or given up."""
        key = secrets.token_hex(12)
        delivery = {**delivery, "attempts": 0}
        if self.cluster is not None:
            await self.cluster.own(CLAIM, key, CLAIM_S)
        await self.store.put(DELIVERIES_TABLE, key, delivery)
        self._spawn(key, delivery)

    def _spawn(self, key: str, delivery: dict[str, Any]) -> None:
        self._owned.add(key)
        task = asyncio.create_task(self._deliver(key, delivery), name=f"callback-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Deliveries stored before a restart are tried again (shared: those no live process owns)."""
        for key, delivery in (await self.store.all(DELIVERIES_TABLE)).items():
            if key in self._owned:
                continue
            if self.cluster is None or await self.cluster.own(CLAIM, key, CLAIM_S):
                self._spawn(key, delivery)

    def share(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._adopter = asyncio.create_task(self._adopt_forever(), name="bbb-lb-deliveries")

    async def _adopt_forever(self) -> None:
        """Renew this process's claims; adopt the deliveries of a process that died."""
        assert self.cluster is not None
        while True:
            await asyncio.sleep(ADOPT_EVERY_S)
            try:
                await self.cluster.keep_owning(CLAIM, sorted(self._owned), CLAIM_S)
                await self.resume()
            except StoreError as exc:
                log.warning("callback deliveries not checked: %s", exc)

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
            try:
                await self.store.put(DELIVERIES_TABLE, key, {**delivery, "attempts": attempts})
            except StoreError as exc:  # the store is away (Redis down): retrying matters more than the count
                log.warning("%s to integration %s: attempt count not saved: %s", delivery["what"],
                            delivery["integration"], exc)
            await asyncio.sleep(self.retry_delays_s[attempts - 1])
        await self._forget(key)
        self._owned.discard(key)
        if self.cluster is not None:
            await self.cluster.disown(CLAIM, key)

    async def _forget(self, key: str) -> None:
        """Delete a finished delivery; while the store is away, keep trying (else a restart sends it again)."""
        delay = 0.5
        while True:
            try:
                await self.store.delete(DELIVERIES_TABLE, key)
                return
            except StoreError as exc:
                log.warning("finished delivery not yet removed from the store, again in %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

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
        if self._adopter is not None:
            self._adopter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adopter
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.outbound.close()
