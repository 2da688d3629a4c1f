"""One running load balancer: its parts built in dependency order, started and stopped together.

What operators change at run time is ``lb.server_controls``, ``lb.integration_controls`` and
``lb.rule_controls`` (``controls_servers``, ``controls_integrations``, ``controls_rules``); several processes
on one Redis store keep each other in step through ``change_relay.ChangeRelay``; what follows each poll is
``poll_followup.PollFollowUp``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from lb_core.backend import BackendClient
from lb_core.callbacks import Callbacks
from lb_core.change_relay import ChangeRelay
from lb_core.cluster import Cluster, StopBudget
from lb_core.config import Config
from lb_core.controls_integrations import IntegrationControls
from lb_core.controls_rules import RuleControls, load_global_rules
from lb_core.controls_servers import ServerControls, ServerOverrides
from lb_core.deliveries import Deliveries
from lb_core.event_log import EventLog
from lb_core.forwarding import Forwarder
from lb_core.gateway import Gateway
from lb_core.geo import GeoLocator, fill_geoloc
from lb_core.handlers.context import Services
from lb_core.integrations import Integrations
from lb_core.lifecycle import MeetingLifecycle
from lb_core.listings import ListingsCache
from lb_core.meeting_creates import CreateCoordinator
from lb_core.meetings import MeetingRegistry
from lb_core.monitor import Monitor
from lb_core.outbound import OutboundClient, own_ports
from lb_core.placement import Locate, Placer
from lb_core.policy import Policy
from lb_core.poll_followup import PollFollowUp
from lb_core.pool import Pool
from lb_core.recording_http import RecordingDoors
from lb_core.recording_imports import RecordingImports
from lb_core.recording_index import RecordingIndex
from lb_core.recording_service import Recordings
from lb_core.recording_sync import RecordingSync
from lb_core.shared_poller import SharedPoller
from lb_core.store import Store, make_store
from lb_core.store_memory import MemoryStore
from lb_core.store_redis import RedisStore
from lb_core.verify import Verifier

log = logging.getLogger("bbb_lb")

META_TABLE = "meta"


@dataclass(frozen=True, slots=True)
class Api:
    """The API side of an LB: the gateway, the services its handlers use, and the recordings' sync and
    imports (the LB starts and stops them)."""

    gateway: Gateway
    services: Services
    recording_sync: RecordingSync
    recording_imports: RecordingImports


def assemble(config: Config, pool: Pool, meetings: MeetingRegistry, events: EventLog, backend: BackendClient,
             integrations: Integrations, instance_id: str, *, locate: Locate | None = None,
             store: Store | None = None, deliveries: Deliveries | None = None, policy: Policy | None = None,
             leads: Callable[[], bool] | None = None) -> Api:
    """The gateway and its services, each built after what it needs (callbacks only with a store and
    ``deliveries``). ``LoadBalancer`` starts this (and loads the recordings index); tests may build it over
    a scripted backend (their index then lives in memory). ``leads``: whether this process reads the
    servers' recordings (several processes on one Redis: only the poller does)."""
    forwarder = Forwarder(config, pool, backend)
    listings = ListingsCache(config, pool, forwarder)
    # Recordings that outlive their servers: the index, kept in step with the servers and changed through
    # the LB; archives imported (uploads and playback on the API port).
    recordings = RecordingIndex(store if store is not None else MemoryStore(), pool, config.recordings.retention_days)
    recording_sync = RecordingSync(config, pool, backend, recordings, leads)
    recording_changes = Recordings(config.recordings, pool, recordings, recording_sync)
    lifecycle = MeetingLifecycle(config, pool, meetings, events, backend, listings, recordings)
    callbacks = (Callbacks(store, pool, config.public_url, lifecycle.meeting_ended, deliveries,
                           on_recording_ready=recording_sync.sync_soon)
                 if store is not None and deliveries is not None else None)
    recording_imports = RecordingImports(config.recordings, pool, recordings,
                                         callbacks.recording_imported if callbacks is not None else None)
    services = Services(config, pool, meetings, CreateCoordinator(meetings), events, backend, forwarder, listings, recordings, lifecycle,
                        Placer(config, pool, meetings, locate), callbacks, instance_id,
                        policy if policy is not None else Policy(config.rules), recording_changes)
    gateway = Gateway(config, Verifier(config, integrations), services, callbacks,
                      RecordingDoors(recording_imports, recordings, config.recordings_public_url))
    return Api(gateway, services, recording_sync, recording_imports)


class LoadBalancer:
    """Build inside a running event loop with ``await LoadBalancer.start(config)``."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.pool = Pool(list(config.servers))
        self.meetings = MeetingRegistry(store)
        self.events = EventLog(store, config.record_events, config.events_retention_days)
        # Several processes on one Redis: this one's part (node id, poller lease, change notices).
        self.cluster: Cluster | None = Cluster(store) if isinstance(store, RedisStore) else None
        # A change made here, told to the other processes (none when alone).
        self.tell = self.cluster.publish if self.cluster is not None else None
        self.integrations = Integrations(config.integrations, store, on_change=self.tell)
        self.overrides = ServerOverrides(store, self.pool, self.meetings, self.tell)
        self.policy = Policy(config.rules)  # the integrations' rules, participant counts, refusals by limit
        # The operators' changes, once the LB runs.
        self.server_controls: ServerControls | None = None
        self.integration_controls: IntegrationControls | None = None
        self.rule_controls: RuleControls | None = None
        self.relay: ChangeRelay | None = None
        self.backend: BackendClient | None = None
        self.lifecycle: MeetingLifecycle | None = None
        self.gateway: Gateway | None = None
        self.recordings: Recordings | None = None
        self.recording_sync: RecordingSync | None = None
        self.recording_imports: RecordingImports | None = None
        self.monitor: Monitor | None = None
        self.callbacks: Callbacks | None = None
        self.deliveries: Deliveries | None = None
        self.instance_id = ""
        self.locator: GeoLocator | None = None
        self.shared_poller: SharedPoller | None = None
        self.listings: ListingsCache | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, config: Config, store: Store | None = None, *, poll: bool = True) -> LoadBalancer:
        lb = cls(config, store or make_store(config))
        await lb._start(poll)
        return lb

    async def _start(self, poll: bool) -> None:
        """Each part is built once its dependencies exist: nothing is wired in afterwards."""
        config = self.config
        await self.store.open()
        self.instance_id = await self._instance_id()
        await self.meetings.load()
        await self.events.load()
        await self.overrides.apply()
        await self.integrations.load()
        await load_global_rules(self.store, self.policy)
        backend = self.backend = BackendClient(config.backend_timeout_s, config.backend_connect_timeout_s,
                                               config.max_body_bytes)
        if config.geo.database:
            self.locator = await asyncio.to_thread(GeoLocator, config.geo.database)
        self.deliveries = Deliveries(self.store, OutboundClient(config.callbacks, own_ports(config), config.public_url),
                                     self.integrations, config.callback_retry_delays_s)
        api = assemble(config, self.pool, self.meetings, self.events, backend, self.integrations, self.instance_id,
                       locate=self.locator.locate if self.locator is not None else None,
                       store=self.store, deliveries=self.deliveries, policy=self.policy,
                       leads=lambda: self.cluster is None or self.cluster.leader)
        lifecycle = self.lifecycle = api.services.lifecycle
        self.callbacks, self.gateway = api.services.callbacks, api.gateway
        self.recordings = api.services.recording_changes
        self.recording_sync, self.recording_imports = api.recording_sync, api.recording_imports
        await api.services.recordings.load()
        self.listings = api.services.listings
        if self.cluster is not None:
            self.deliveries.cluster = self.cluster
        await self.deliveries.resume()
        if self.cluster is not None:
            self.deliveries.share(self.cluster)
        follow_up = PollFollowUp(self.listings, self.policy, self.meetings, self.overrides)
        self.monitor = Monitor(config, self.pool, self.meetings, backend, lifecycle.forget,
                               after_poll=follow_up.after_poll, on_listing=follow_up.on_listing)
        self.server_controls = ServerControls(config, self.pool, self.meetings, backend, lifecycle, self.overrides,
                                              self.policy, self.locator, self.monitor.poll_soon, self._background)
        self.integration_controls = IntegrationControls(self.integrations, self.pool, self.meetings, self.policy)
        self.rule_controls = RuleControls(config.rules, self.policy, self.store, self.integration_controls,
                                          self.tell)
        if self.cluster is not None:
            cluster = self.cluster
            self.relay = ChangeRelay(cluster, config, self.store, self.meetings, self.overrides, self.integrations,
                                     self.policy, lifecycle, self.listings, self.monitor.poll_soon,
                                     recordings=self.recordings.index)
            self.relay.listen()
            if poll:
                self.shared_poller = SharedPoller(self.cluster, self.monitor, self.pool, config, self.status,
                                                  after_view=follow_up.after_view)
                self.shared_poller.start()
        if poll:
            self.monitor.start()
            self.recording_sync.start()
        self._background(fill_geoloc(self.locator, self.pool))
        log.info("bbb-lb %s started: %d servers, %d meetings known, %d meeting events",
                 self.instance_id, len(self.pool), len(self.meetings), len(self.events))

    async def _instance_id(self) -> str:
        if self.config.instance_id:
            return self.config.instance_id
        doc = await self.store.put_if_absent(META_TABLE, "instance", {"id": uuid.uuid4().hex})
        return str(doc["id"])

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Every part stopped in turn. On Redis the steps that wait on it share one ``StopBudget``
        (``cluster.REDIS_STOP_S``), so a Redis that stops answering never holds a stop past the service's stop
        timeout (``addons.runner.STOP_DEADLINE_S``)."""
        budget = StopBudget()
        if self.shared_poller is not None:
            await self.shared_poller.stop(budget)
        if self.cluster is not None:
            await self.cluster.stop(budget)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            within = budget.step()
            _, left = await asyncio.wait(set(self._tasks), timeout=within)
            if left:
                log.warning("%d background tasks did not stop within %.1f s; left behind", len(left), within)
        if self.locator is not None:
            self.locator.close()
        if self.monitor is not None:  # its rounds talk to Redis: bounded like the other steps
            within = budget.step()
            try:
                async with asyncio.timeout(within):
                    await self.monitor.stop()
            except TimeoutError:
                log.warning("the poll loop did not stop within %.1f s; left behind", within)
        if self.recording_sync is not None:
            await self.recording_sync.stop()
        if self.recording_imports is not None:
            await self.recording_imports.stop()
        if self.deliveries is not None:
            await self.deliveries.close()
        if self.backend is not None:
            await self.backend.close()
        if self.cluster is None:
            await self.events.close()  # local writes: they finish
        else:
            within = budget.step()
            try:
                async with asyncio.timeout(within):
                    await self.events.close()
            except TimeoutError:
                log.warning("event index writes to Redis unfinished after %.1f s; given up", within)
        if isinstance(self.store, RedisStore):
            await self.store.close(within=budget.step(budget.deadline - time.monotonic()))
        else:
            await self.store.close()
        log.info("bbb-lb stopped")

    def note_own_listener(self, port: int) -> None:
        """A listener of this LB bound late (port 0): callbacks must never be sent to it either."""
        if self.deliveries is not None:
            self.deliveries.outbound.policy.own_ports.add(port)

    def status(self) -> dict[str, Any]:
        status = {"instance": self.instance_id, "meetings": len(self.meetings), "events": len(self.events)}
        if self.cluster is not None:
            status.update(node=self.cluster.node_id, poller=self.cluster.leader)
        return status
