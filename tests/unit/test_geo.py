"""GeoLocator against a small database built at test time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lb_core.config_sections import ServerConfig
from lb_core.geo import ALPHA3, GeoError, GeoLocator, empty_geoloc, fill_geoloc, fill_server_geoloc, resolve
from lb_core.pool import Server
from tests import geodb


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geodb.build(tmp_path_factory.mktemp("geo") / "city.mmdb")


@pytest.fixture
def locator(database: Path) -> Iterator[GeoLocator]:
    geo = GeoLocator(str(database))
    yield geo
    geo.close()


def server(name: str, url: str) -> Server:
    return Server(ServerConfig(name=name, url=url, secret="s"))


def test_locate_known_addresses(locator: GeoLocator) -> None:
    assert locator.locate("127.0.0.3") == (52.52, 13.40)
    assert locator.locate("203.0.113.7") == (52.39, 13.06)
    assert locator.locate("198.51.100.200") == (-23.55, -46.63)
    assert locator.locate("2001:db8:1::5") == (52.52, 13.40)
    assert locator.locate(" [2001:db8:1::5] ") == (52.52, 13.40)


@pytest.mark.parametrize("ip", ["10.1.2.3", "127.0.0.1", "192.0.2.1", "::1", "2001:db8:2::1", "", "not an ip",
                                "999.1.1.1", "203.0.113"])
def test_locate_unknown_or_invalid_is_none(locator: GeoLocator, ip: str) -> None:
    assert locator.locate(ip) is None


def test_geoloc_for_fills_the_mconf_fields(locator: GeoLocator) -> None:
    assert locator.geoloc_for("bbb-br.example.org", "127.0.0.2") == {
        "address": "bbb-br.example.org", "ip": "127.0.0.2", "countryCode": "BR", "countryCode3": "BRA",
        "countryName": "Brazil", "city": "Porto Alegre", "latitude": "-30.03", "longitude": "-51.2",
        "continentCode": "SA",
    }
    berlin = locator.geoloc_for("127.0.0.3", "127.0.0.3")
    assert (berlin["countryCode"], berlin["countryCode3"], berlin["city"]) == ("DE", "DEU", "Berlin")
    assert (float(berlin["latitude"]), float(berlin["longitude"])) == (52.52, 13.40)


@pytest.mark.parametrize("ip", ["10.0.0.1", "", "nonsense"])
def test_geoloc_for_unknown_leaves_fields_empty(locator: GeoLocator, ip: str) -> None:
    geoloc = locator.geoloc_for("bbb.example.org", ip)
    assert geoloc == empty_geoloc("bbb.example.org", ip)
    assert set(geoloc) == {"address", "ip", "countryCode", "countryCode3", "countryName", "city", "latitude",
                           "longitude", "continentCode"}
    assert all(v == "" for k, v in geoloc.items() if k not in ("address", "ip"))


def test_alpha3_table_covers_iso_3166() -> None:
    assert len(ALPHA3) >= 249
    assert all(len(k) == 2 and len(v) == 3 and k.isupper() and v.isupper() for k, v in ALPHA3.items())
    assert (ALPHA3["DE"], ALPHA3["BR"], ALPHA3["US"], ALPHA3["GB"], ALPHA3["ZW"]) == ("DEU", "BRA", "USA", "GBR",
                                                                                      "ZWE")


def test_a_database_without_locations_is_refused(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    writer.insert_network(IPSet(["127.0.0.2/32"]), {"autonomous_system_number": 64500})
    writer.to_db_file(str(tmp_path / "asn.mmdb"))
    with pytest.raises(GeoError, match="City database is needed"):
        GeoLocator(str(tmp_path / "asn.mmdb"))
    (tmp_path / "junk.mmdb").write_bytes(b"not a database")
    with pytest.raises(GeoError, match="not a readable"):
        GeoLocator(str(tmp_path / "junk.mmdb"))


async def test_resolve_ip_literals_and_localhost(locator: GeoLocator) -> None:
    assert await locator.resolve("127.0.0.3") == "127.0.0.3"
    assert await locator.resolve("2001:db8::1") == "2001:db8::1"
    assert await locator.resolve("[2001:db8::1]") == "2001:db8::1"
    assert await locator.resolve("localhost") in ("127.0.0.1", "::1")
    assert await resolve("") is None
    assert await resolve("no-such-host.invalid", timeout_s=5) is None


async def test_fill_server_geoloc(locator: GeoLocator) -> None:
    br = server("br", "http://127.0.0.2:8080/bigbluebutton/")
    await fill_server_geoloc(locator, br)
    assert br.geoloc["city"] == "Porto Alegre" and br.geoloc["address"] == "127.0.0.2"
    local = server("local", "https://localhost/bigbluebutton/")
    await fill_server_geoloc(None, local)
    assert local.geoloc == empty_geoloc("localhost", local.geoloc["ip"])
    assert local.geoloc["ip"] in ("127.0.0.1", "::1")


async def test_fill_geoloc_many(locator: GeoLocator) -> None:
    servers = [server(f"s{i}", f"http://127.0.0.{i}:8080/") for i in (2, 3, 4, 9)]
    await fill_geoloc(locator, servers, concurrency=2)
    assert [s.geoloc["city"] for s in servers] == ["Porto Alegre", "Berlin", "Frankfurt", ""]
    assert [s.geoloc["ip"] for s in servers] == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
