"""Where servers and requesters are: a MaxMind City database, read into memory once at start.

Lookups (``locate``, ``geoloc_for``) touch only the in-memory database, so they may run inside a request
hook. Name resolution (``resolve``) is asynchronous and bounded by a timeout. A server's ``geoloc`` carries
the fields the Mconf-LB showed in getServers, as strings, empty when unknown.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable

import geoip2.database
import geoip2.errors
import geoip2.models
from maxminddb import MODE_MEMORY, InvalidDatabaseError

from lb_core.pool import Server

log = logging.getLogger("bbb_lb")

RESOLVE_TIMEOUT_S = 5.0
FILL_CONCURRENCY = 16

# ISO 3166-1 alpha-2 -> alpha-3 (City records carry only alpha-2), plus XK -> XKX (Kosovo, as MaxMind uses it).
_ALPHA3_PAIRS = (
    "ADAND AEARE AFAFG AGATG AIAIA ALALB AMARM AOAGO AQATA ARARG ASASM ATAUT AUAUS AWABW AXALA AZAZE "
    "BABIH BBBRB BDBGD BEBEL BFBFA BGBGR BHBHR BIBDI BJBEN BLBLM BMBMU BNBRN BOBOL BQBES BRBRA BSBHS "
    "BTBTN BVBVT BWBWA BYBLR BZBLZ CACAN CCCCK CDCOD CFCAF CGCOG CHCHE CICIV CKCOK CLCHL CMCMR CNCHN "
    "COCOL CRCRI CUCUB CVCPV CWCUW CXCXR CYCYP CZCZE DEDEU DJDJI DKDNK DMDMA DODOM DZDZA ECECU EEEST "
    "EGEGY EHESH ERERI ESESP ETETH FIFIN FJFJI FKFLK FMFSM FOFRO FRFRA GAGAB GBGBR GDGRD GEGEO GFGUF "
    "GGGGY GHGHA GIGIB GLGRL GMGMB GNGIN GPGLP GQGNQ GRGRC GSSGS GTGTM GUGUM GWGNB GYGUY HKHKG HMHMD "
    "HNHND HRHRV HTHTI HUHUN IDIDN IEIRL ILISR IMIMN ININD IOIOT IQIRQ IRIRN ISISL ITITA JEJEY JMJAM "
    "JOJOR JPJPN KEKEN KGKGZ KHKHM KIKIR KMCOM KNKNA KPPRK KRKOR KWKWT KYCYM KZKAZ LALAO LBLBN LCLCA "
    "LILIE LKLKA LRLBR LSLSO LTLTU LULUX LVLVA LYLBY MAMAR MCMCO MDMDA MEMNE MFMAF MGMDG MHMHL MKMKD "
    "MLMLI MMMMR MNMNG MOMAC MPMNP MQMTQ MRMRT MSMSR MTMLT MUMUS MVMDV MWMWI MXMEX MYMYS MZMOZ NANAM "
    "NCNCL NENER NFNFK NGNGA NINIC NLNLD NONOR NPNPL NRNRU NUNIU NZNZL OMOMN PAPAN PEPER PFPYF PGPNG "
    "PHPHL PKPAK PLPOL PMSPM PNPCN PRPRI PSPSE PTPRT PWPLW PYPRY QAQAT REREU ROROU RSSRB RURUS RWRWA "
    "SASAU SBSLB SCSYC SDSDN SESWE SGSGP SHSHN SISVN SJSJM SKSVK SLSLE SMSMR SNSEN SOSOM SRSUR SSSSD "
    "STSTP SVSLV SXSXM SYSYR SZSWZ TCTCA TDTCD TFATF TGTGO THTHA TJTJK TKTKL TLTLS TMTKM TNTUN TOTON "
    "TRTUR TTTTO TVTUV TWTWN TZTZA UAUKR UGUGA UMUMI USUSA UYURY UZUZB VAVAT VCVCT VEVEN VGVGB VIVIR "
    "VNVNM VUVUT WFWLF WSWSM XKXKX YEYEM YTMYT ZAZAF ZMZMB ZWZWE "
)
ALPHA3: dict[str, str] = {pair[:2]: pair[2:] for pair in _ALPHA3_PAIRS.split()}


class GeoError(Exception):
    """The geolocation database cannot be used, phrased for the operator."""


def empty_geoloc(address: str, ip: str) -> dict[str, str]:
    """A server's geoloc when nothing but its address (and maybe its IP) is known."""
    return {"address": address, "ip": ip, "countryCode": "", "countryCode3": "", "countryName": "", "city": "",
            "latitude": "", "longitude": "", "continentCode": ""}


class GeoLocator:
    """A MaxMind City (or Enterprise) database; build it off the event loop, it reads the whole file."""

    def __init__(self, path: str) -> None:
        try:
            self._reader = geoip2.database.Reader(path, mode=MODE_MEMORY)
        except (OSError, ValueError, InvalidDatabaseError) as exc:
            raise GeoError(f"{path}: not a readable MaxMind database: {exc}") from None
        kind = self._reader.metadata().database_type
        if "City" not in kind and "Enterprise" not in kind:
            self._reader.close()
            raise GeoError(f"{path}: a {kind} database has no locations; a City database is needed")
        self.path = path

    def _city(self, ip: str) -> geoip2.models.City | None:
        try:
            return self._reader.city(_clean(ip))
        except (ValueError, TypeError, geoip2.errors.GeoIP2Error, InvalidDatabaseError):
            return None

    def locate(self, ip: str) -> tuple[float, float] | None:
        """(latitude, longitude) of an address; None when invalid, private or not in the database."""
        record = self._city(ip)
        if record is None:
            return None
        latitude, longitude = record.location.latitude, record.location.longitude
        if latitude is None or longitude is None:
            return None
        return float(latitude), float(longitude)

    def geoloc_for(self, address: str, ip: str) -> dict[str, str]:
        geoloc = empty_geoloc(address, ip)
        record = self._city(ip) if ip else None
        if record is None:
            return geoloc
        country = record.country if record.country.iso_code else record.registered_country
        code = country.iso_code or ""
        location = record.location
        geoloc.update(
            countryCode=code,
            countryCode3=ALPHA3.get(code.upper(), ""),
            countryName=country.name or "",
            city=record.city.name or "",
            latitude="" if location.latitude is None else str(float(location.latitude)),
            longitude="" if location.longitude is None else str(float(location.longitude)),
            continentCode=record.continent.code or "",
        )
        return geoloc

    async def resolve(self, host: str) -> str | None:
        return await resolve(host)

    def close(self) -> None:
        self._reader.close()


def _clean(ip: str) -> str:
    """An address as a header or URL may write it: ``[v6]``, ``v4:port`` and zone IDs are tolerated."""
    ip = ip.strip()
    if ip.startswith("["):
        ip = ip[1:].partition("]")[0]
    elif ip.count(":") == 1:
        ip = ip.partition(":")[0]
    return ip.partition("%")[0]


async def resolve(host: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> str | None:
    """The first address a name resolves to (an IP literal is its own answer); None on failure."""
    host = host.strip().strip("[]")
    if not host:
        return None
    try:
        ipaddress.ip_address(host.partition("%")[0])
        return host
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout_s)
    except (OSError, TimeoutError, UnicodeError) as exc:
        log.warning("cannot resolve %s: %s", host, exc or "timed out")
        return None
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return str(sockaddr[0])
    return None


async def fill_server_geoloc(locator: GeoLocator | None, server: Server) -> None:
    """Resolve the server's host and set its geoloc (only address and ip without a database)."""
    address = server.address
    ip = await resolve(address) or ""
    server.geoloc = locator.geoloc_for(address, ip) if locator is not None else empty_geoloc(address, ip)


async def fill_geoloc(locator: GeoLocator | None, servers: Iterable[Server],
                      concurrency: int = FILL_CONCURRENCY) -> None:
    """``fill_server_geoloc`` for many servers, at most ``concurrency`` resolving at once."""
    limit = asyncio.Semaphore(concurrency)

    async def one(server: Server) -> None:
        async with limit:
            await fill_server_geoloc(locator, server)

    await asyncio.gather(*(one(s) for s in servers))
