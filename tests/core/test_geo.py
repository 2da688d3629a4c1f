"""Geolocation in process: a test City database, simulated servers on 127.0.0.2-4.

The requesters' addresses (203.0.113.x, 198.51.100.x) only ever appear in X-Forwarded-For headers;
the connection itself comes from 127.0.0.1, the trusted proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bbbsim
import pytest

from tests import geodb
from tests.core.conftest import CoreLB, Sim, start_sim, until

HOSTS = {"portoalegre": "127.0.0.2", "berlin": "127.0.0.3", "frankfurt": "127.0.0.4"}
POTSDAM = "203.0.113.7"
SAO_PAULO = "198.51.100.9"


@pytest.fixture
async def geo_sim() -> AsyncIterator[Sim]:
    simulator = await start_sim([bbbsim.ServerSpec(name, f"http://{host}:0/bigbluebutton/", f"secret-{name}")
                                 for name, host in HOSTS.items()])
    yield simulator
    await simulator.cluster.stop()


@pytest.fixture(scope="module")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geodb.build(tmp_path_factory.mktemp("geo") / "city.mmdb")


@pytest.fixture
def geo_lb(lb_factory, geo_sim: Sim, geo_db: Path):  # type: ignore[no-untyped-def]
    async def factory(**geo: Any) -> CoreLB:
        lb = await lb_factory(simulator=geo_sim, geo={"database": str(geo_db), "prefer_nearby": True,
                                                      "trusted_proxies": ["127.0.0.1/32"], **geo})
        await until(lambda: _all_located(lb), 10, what="servers' geoloc")
        return lb

    return factory


async def _all_located(lb: CoreLB) -> bool:
    return all(g["city"] for g in (await geolocs(lb)).values())


async def geolocs(lb: CoreLB) -> dict[str, dict[str, str]]:
    reply = await lb.call("getServers")
    assert reply.status == 200 and reply.field("returncode") == "SUCCESS", reply.text
    return {server.findtext("name") or "": {field.tag: field.text or "" for field in server.find("geoloc")}
            for server in reply.xml().iter("server")}


async def create(lb: CoreLB, meeting_id: str, forwarded_for: str | None = None, **params: str) -> None:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    reply = await lb.call("create", {"meetingID": meeting_id, "name": meeting_id, **params}, headers=headers)
    assert reply.field("returncode") == "SUCCESS", reply.text


async def test_get_servers_shows_each_servers_geoloc(geo_lb):
    lb = await geo_lb(nearby_km=100)
    found = await geolocs(lb)
    assert found["portoalegre"] == {
        "address": "127.0.0.2", "ip": "127.0.0.2", "countryCode": "BR", "countryCode3": "BRA",
        "countryName": "Brazil", "city": "Porto Alegre", "latitude": "-30.03", "longitude": "-51.2",
        "continentCode": "SA",
    }
    for name, city in (("berlin", "Berlin"), ("frankfurt", "Frankfurt")):
        geoloc = found[name]
        assert (geoloc["ip"], geoloc["city"], geoloc["countryCode"], geoloc["countryCode3"]) == (
            HOSTS[name], city, "DE", "DEU")
        assert geoloc["countryName"] == "Germany" and geoloc["continentCode"] == "EU"
        assert float(geoloc["latitude"]) > 50 and float(geoloc["longitude"]) > 8


async def test_new_meetings_go_to_the_server_nearest_the_requester(geo_lb, geo_sim):
    lb = await geo_lb(nearby_km=100)
    await create(lb, "from-potsdam", POTSDAM)
    await create(lb, "from-sao-paulo", SAO_PAULO)
    await create(lb, "from-potsdam-2", f"{POTSDAM}, 10.9.9.9")  # the client is the first of the chain
    await create(lb, "from-sao-paulo-2", f"{SAO_PAULO}, 10.9.9.9")
    assert geo_sim.server_of("from-potsdam") == "berlin"
    assert geo_sim.server_of("from-potsdam-2") == "berlin"  # Frankfurt is idle, but more than 100 km further
    assert geo_sim.server_of("from-sao-paulo") == "portoalegre"
    assert geo_sim.server_of("from-sao-paulo-2") == "portoalegre"


async def test_among_nearby_servers_the_less_loaded_wins(geo_lb, geo_sim):
    lb = await geo_lb(nearby_km=500)  # Berlin and Frankfurt are both within 500 km of the closest to Potsdam
    for meeting_id, server in (("busy-1", "berlin"), ("busy-2", "berlin"), ("busy-3", "frankfurt")):
        await create(lb, meeting_id, preferredServer=server)
        assert geo_sim.server_of(meeting_id) == server
    # Load alone would pick the idle Porto Alegre; nearness keeps Berlin and Frankfurt, the less loaded wins.
    await create(lb, "from-potsdam", POTSDAM)
    assert geo_sim.server_of("from-potsdam") == "frankfurt"
    await create(lb, "from-sao-paulo", SAO_PAULO)
    assert geo_sim.server_of("from-sao-paulo") == "portoalegre"


async def test_forwarded_for_from_an_untrusted_proxy_is_ignored(geo_lb, geo_sim):
    lb = await geo_lb(nearby_km=100, trusted_proxies=["10.0.0.0/8"])
    await create(lb, "spoofed-1", SAO_PAULO)
    await create(lb, "spoofed-2", SAO_PAULO)
    # The header would send both to Porto Alegre; the connection's own address (127.0.0.1) has no location,
    # so placement goes by load alone and spreads them.
    placed = {geo_sim.server_of("spoofed-1"), geo_sim.server_of("spoofed-2")}
    assert "portoalegre" not in placed and len(placed) == 2
