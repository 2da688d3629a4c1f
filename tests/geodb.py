"""A small MaxMind-City-compatible database, built at test time with mmdb-writer.

The networks are data only: 203.0.113.0/24 and 198.51.100.0/24 are documentation ranges, never contacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

CONTINENTS = {"BR": ("SA", "South America"), "DE": ("EU", "Europe")}
COUNTRIES = {"BR": "Brazil", "DE": "Germany"}

# network -> (city, country ISO code, latitude, longitude)
PLACES: dict[str, tuple[str, str, float, float]] = {
    "127.0.0.2/32": ("Porto Alegre", "BR", -30.03, -51.2),
    "127.0.0.3/32": ("Berlin", "DE", 52.52, 13.40),
    "127.0.0.4/32": ("Frankfurt", "DE", 50.11, 8.68),
    "203.0.113.0/24": ("Potsdam", "DE", 52.39, 13.06),
    "198.51.100.0/24": ("São Paulo", "BR", -23.55, -46.63),
    "2001:db8:1::/48": ("Berlin", "DE", 52.52, 13.40),
}


def city_record(city: str, country: str, latitude: float, longitude: float) -> dict[str, Any]:
    continent, continent_name = CONTINENTS[country]
    return {
        "city": {"names": {"en": city}},
        "continent": {"code": continent, "names": {"en": continent_name}},
        "country": {"iso_code": country, "names": {"en": COUNTRIES[country]}},
        "location": {"latitude": latitude, "longitude": longitude},
    }


def build(path: Path, places: dict[str, tuple[str, str, float, float]] | None = None) -> Path:
    """Write a GeoLite2-City database; IPv4 networks live in ::/96, as in MaxMind's own files."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en"],
                        description="bbb-lb test geolocation")
    for network, place in (PLACES if places is None else places).items():
        writer.insert_network(IPSet([network]), city_record(*place))
    writer.to_db_file(str(path))
    return path
