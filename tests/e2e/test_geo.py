"""Geolocation end to end: a real bbb-lb process, a test City database, simulated servers on 127.0.0.2-4.

The requesters' addresses (203.0.113.x, 198.51.100.x) only ever appear in X-Forwarded-For headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import geodb
from tests.conftest import LB, Simulator, free_port, make_lb, start_simulator_for, wait_for
from tests.e2e.test_gateway import server_of

HOSTS = {"portoalegre": "127.0.0.2", "berlin": "127.0.0.3", "frankfurt": "127.0.0.4"}
POTSDAM = "203.0.113.7"
SAO_PAULO = "198.51.100.9"


@pytest.fixture(scope="module")
def geo_sim() -> Iterator[Simulator]:
    simulator = start_simulator_for([
        {"name": name, "url": f"http://{host}:{free_port()}/bigbluebutton/", "secret": f"secret-{name}"}
        for name, host in HOSTS.items()
    ])
    yield simulator
    simulator.process.terminate()
    simulator.process.wait(10)


@pytest.fixture(scope="module")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geodb.build(tmp_path_factory.mktemp("geo") / "city.mmdb")


@pytest.fixture
def geo_lb(tmp_path: Path, geo_sim: Simulator, geo_db: Path) -> Iterator[Any]:
    started: list[LB] = []

    def factory(**geo: Any) -> LB:
        geo_sim.reset()
        lb = make_lb(tmp_path, geo_sim, geo={"database": str(geo_db), "prefer_nearby": True,
                                             "trusted_proxies": ["127.0.0.1/32"], **geo})
        started.append(lb)
        lb.start()
        wait_for(lambda: all(g["city"] for g in geolocs(lb).values()), 10, what="servers' geoloc")
        return lb

    yield factory
    for lb in started:
        if lb.process is not None:
            lb.stop()


def geolocs(lb: LB) -> dict[str, dict[str, str]]:
    reply = lb.call("getServers")
    assert reply.status == 200 and reply.field("returncode") == "SUCCESS", reply.text
    return {server.findtext("name") or "": {field.tag: field.text or "" for field in server.find("geoloc")}
            for server in reply.xml().iter("server")}


def create(lb: LB, meeting_id: str, forwarded_for: str | None = None, **params: str) -> None:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    reply = lb.call("create", {"meetingID": meeting_id, "name": meeting_id, **params}, headers=headers)
    assert reply.field("returncode") == "SUCCESS", reply.text


def test_get_servers_shows_each_servers_geoloc(geo_lb):
    lb = geo_lb(nearby_km=100)
    found = geolocs(lb)
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


def test_new_meetings_go_to_the_server_nearest_the_requester(geo_lb, geo_sim):
    lb = geo_lb(nearby_km=100)
    create(lb, "from-potsdam", POTSDAM)
    create(lb, "from-sao-paulo", SAO_PAULO)
    create(lb, "from-potsdam-2", f"{POTSDAM}, 10.9.9.9")  # the client is the first of the chain
    create(lb, "from-sao-paulo-2", f"{SAO_PAULO}, 10.9.9.9")
    assert server_of(geo_sim, "from-potsdam") == "berlin"
    assert server_of(geo_sim, "from-potsdam-2") == "berlin"  # Frankfurt is idle, but more than 100 km further
    assert server_of(geo_sim, "from-sao-paulo") == "portoalegre"
    assert server_of(geo_sim, "from-sao-paulo-2") == "portoalegre"


def test_among_nearby_servers_the_less_loaded_wins(geo_lb, geo_sim):
    lb = geo_lb(nearby_km=500)  # Berlin and Frankfurt are both within 500 km of the closest to Potsdam
    for meeting_id, server in (("busy-1", "berlin"), ("busy-2", "berlin"), ("busy-3", "frankfurt")):
        create(lb, meeting_id, preferredServer=server)
        assert server_of(geo_sim, meeting_id) == server
    # Load alone would pick the idle Porto Alegre; nearness keeps Berlin and Frankfurt, the less loaded wins.
    create(lb, "from-potsdam", POTSDAM)
    assert server_of(geo_sim, "from-potsdam") == "frankfurt"
    create(lb, "from-sao-paulo", SAO_PAULO)
    assert server_of(geo_sim, "from-sao-paulo") == "portoalegre"


def test_forwarded_for_from_an_untrusted_proxy_is_ignored(geo_lb, geo_sim):
    lb = geo_lb(nearby_km=100, trusted_proxies=["10.0.0.0/8"])
    create(lb, "spoofed-1", SAO_PAULO)
    create(lb, "spoofed-2", SAO_PAULO)
    # The header would send both to Porto Alegre; the connection's own address (127.0.0.1) has no location,
    # so placement goes by load alone and spreads them.
    placed = {server_of(geo_sim, "spoofed-1"), server_of(geo_sim, "spoofed-2")}
    assert "portoalegre" not in placed and len(placed) == 2
