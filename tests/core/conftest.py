"""lb_core tested in process: a LoadBalancer and simulated BBB servers in the test's own event loop.

No mitmproxy and no bbb-lb process: calls go straight to ``lb.gateway.handle(Request(...))``. The only
sockets are the simulator's (the gateway reaches its servers over real HTTP, as in production).
Polls happen when a test asks for them (``await lb.poll()``), so health and load changes are
deterministic instead of waited for.

The fixtures keep the end-to-end names (``sim``, ``lb``, ``lb_factory``) so a test reads the same in
both places; here their methods that do I/O are coroutines.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest

from lb_core import checksum
from lb_core import config as lb_config
from lb_core.api import Request
from lb_core.service import LoadBalancer
from lb_core.store import Store
from lb_core.store_memory import MemoryStore
from lb_core.store_tinydb import TinyDbStore
from lb_core.trace import Handled
from tests.conftest import REPO, HttpReply

sys.path.insert(0, str(REPO / "scripts"))
import bbbsim  # noqa: E402

PUBLIC_URL = "http://bbb-lb.test:8090"


async def until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                what: str = "condition") -> Any:
    """Wait for ``predicate`` (plain or async) to be truthy, with a deadline; answer its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class Sim:
    """The simulated servers of one test, read and steered directly (no control API, no process)."""

    def __init__(self, cluster: bbbsim.SimCluster) -> None:
        self.cluster = cluster

    @property
    def servers(self) -> list[dict[str, Any]]:
        """Server specs as the LB config takes them, with the ports actually bound."""
        return [{"name": s.name, "url": s.url, "secret": s.secret} for s in self.cluster]

    def server(self, name: str) -> bbbsim.SimServer:
        return self.cluster[name]

    def meetings(self, name: str) -> list[str]:
        return [m.meeting_id for m in self.cluster[name].active_meetings()]

    def requests(self, name: str) -> list[dict[str, Any]]:
        return list(self.cluster[name].requests)

    def server_of(self, meeting_id: str) -> str:
        """The one server running ``meeting_id``."""
        holders = [s.name for s in self.cluster if meeting_id in self.meetings(s.name)]
        assert len(holders) == 1, holders
        return holders[0]

    def meeting(self, server: str, meeting_id: str) -> bbbsim.Meeting:
        return self.cluster[server].meetings[meeting_id]

    async def fault(self, name: str, mode: str, delay_ms: int = 0) -> None:
        await self.cluster[name].set_fault(mode, delay_ms)

    async def end(self, server: str, meeting_id: str) -> None:
        """End a meeting from inside the server (as a moderator would), without telling the LB."""
        meeting = self.cluster[server].active_meeting(meeting_id)
        assert meeting is not None, meeting_id
        await self.cluster[server].end_meeting(meeting)

    def participants(self, server: str, meeting_id: str, participants: int, **counts: int) -> None:
        self.cluster[server].set_participants(meeting_id, participants, **counts)

    def add_recording(self, server: str, meeting_id: str, record_id: str, **extra: Any) -> None:
        self.cluster[server].add_recording(meeting_id, record_id, **extra)


async def start_sim(specs: list[bbbsim.ServerSpec]) -> Sim:
    return Sim(await bbbsim.start_cluster(specs))


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    """Five simulated servers bbb1..bbb5 (secret-1..secret-5) on free ports of 127.0.0.1."""
    simulator = await start_sim(bbbsim.specs_for(5, base_port=0))
    yield simulator
    await simulator.cluster.stop()


class CoreLB:
    """A started LoadBalancer and a client for it that signs calls as an integration would."""

    secret = "lb-secret"

    def __init__(self, config: lb_config.Config, make_store: Callable[[], Store]) -> None:
        self.config = config
        self.make_store = make_store
        self.store = make_store()
        self.lb: LoadBalancer | None = None
        self.answers: list[Handled] = []  # every answer, with the LB's decision trace, for assertions
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> CoreLB:
        self.lb = await LoadBalancer.start(self.config, store=self.store, poll=False)
        await self.poll()  # the first poll marks reachable servers up, as the first round does in production
        return self

    async def stop(self) -> None:
        if self.lb is not None:
            await self.lb.stop()
            self.lb = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def restart(self) -> CoreLB:
        """Stop and start again on the same data (a MemoryStore outlives the LB, as Redis would)."""
        await self.stop()
        if isinstance(self.store, TinyDbStore):
            self.store = self.make_store()  # a closed TinyDbStore is done with: reopen its files
        return await self.start()

    async def poll(self, rounds: int = 1) -> None:
        """Poll every server now, ``rounds`` times in a row."""
        assert self.lb is not None and self.lb.monitor is not None
        for _ in range(rounds):
            await self.lb.monitor.poll_all()

    @property
    def url(self) -> str:
        return self.config.public_url

    @property
    def api(self) -> str:
        return self.url + "/bigbluebutton/api/"

    def sign(self, call: str, query: str = "", secret: str | None = None, algorithm: str = "sha1") -> str:
        return f"{self.api}{call}?{checksum.sign(call, query, secret or self.secret, algorithm)}"

    async def http(self, url: str, *, method: str = "GET", data: bytes = b"", headers: dict[str, str] | None = None,
                   client_ip: str = "127.0.0.1") -> HttpReply:
        """Hand the request to the gateway; ``url`` is a path or an address of the LB's own."""
        parts = urlsplit(url)
        if parts.scheme and parts.netloc != urlsplit(self.url).netloc:
            return await self.fetch(url, method=method, data=data, headers=headers)
        assert self.lb is not None and self.lb.gateway is not None
        request = Request(method=method, path=parts.path, raw_query=parts.query,
                          headers={k.lower(): v for k, v in (headers or {}).items()}, body=data, client_ip=client_ip)
        handled = await self.lb.gateway.handle(request)
        self.answers.append(handled)
        answer = handled.answer
        return HttpReply(answer.status, dict(answer.headers), answer.body)

    async def call(self, call: str, params: dict[str, Any] | list[tuple[str, Any]] | str = "",
                   secret: str | None = None, algorithm: str = "sha256", **kwargs: Any) -> HttpReply:
        query = params if isinstance(params, str) else urlencode(params)
        return await self.http(self.sign(call, query, secret, algorithm), **kwargs)

    async def fetch(self, url: str, *, method: str = "GET", data: bytes = b"",
                    headers: dict[str, str] | None = None) -> HttpReply:
        """A real HTTP request elsewhere (a simulated server a join redirects to); redirects not followed."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        async with self._http.request(method, url, data=data or None, headers=headers,
                                      allow_redirects=False) as response:
            return HttpReply(response.status, dict(response.headers), await response.read())


def lb_config_for(tmp_path: Path, servers: list[dict[str, Any]], **overrides: Any) -> lb_config.Config:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "public_url": PUBLIC_URL,
        "secret": CoreLB.secret,
        "servers": [dict(s) for s in servers],
        "store": {"path": str(tmp_path / "lb.json")},
        "monitor": {"interval_s": 0.5, "timeout_s": 1.0, "down_after": 2, "up_after": 2},
    }
    data.update(overrides)
    return lb_config.parse(data, source="test-config.yaml", base_dir=tmp_path)


LbFactory = Callable[..., Awaitable[CoreLB]]


@pytest.fixture
async def lb_factory(tmp_path: Path, sim: Sim) -> AsyncIterator[LbFactory]:
    """``await lb_factory(servers=[0, 1], store="tinydb", **config)``: a started in-process LB."""
    started: list[CoreLB] = []

    async def factory(servers: list[int] | list[dict[str, Any]] | None = None, *, store: str = "memory",
                      simulator: Sim | None = None, **overrides: Any) -> CoreLB:
        """``servers``: indexes into the simulator's servers, or server configs (to add weights, limits)."""
        source = simulator or sim
        chosen = source.servers if servers is None else [
            s if isinstance(s, dict) else source.servers[s] for s in servers]
        config = lb_config_for(tmp_path, chosen, **overrides)
        lb = CoreLB(config, (lambda: TinyDbStore(config.store_path)) if store == "tinydb" else MemoryStore)
        started.append(lb)
        return await lb.start()

    yield factory
    for lb in started:
        await lb.stop()


@pytest.fixture
async def lb(lb_factory: LbFactory) -> CoreLB:
    return await lb_factory()
