"""Calls from the LB to integrations (end and recording-ready callbacks): their own pool, their own rules.

An integration chooses these URLs, so they are an attacker's choice: the LB must not become a way to
reach its own machine, its private network or its own listeners. Every address a name resolves to is
checked, and the connection goes to the checked address (the resolver below is what aiohttp connects
with), so a DNS answer cannot change between the check and the connect. The pool is separate from the
backend pool, with its own connection limit, timeout and answer size, so slow or hostile integrations
never take connections or time from BBB calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from lb_core.config import Config
from lb_core.config_sections import CallbacksConfig
from lb_core.safe_errors import describe

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetRefused(Exception):
    """The URL points somewhere the LB does not call; the message is safe to show the integration."""


class DeliveryFailed(Exception):
    """The integration could not be reached or did not answer in time; the message names no URL."""


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_local(address: Address) -> bool:
    """Whether this machine owns ``address``: binding to it succeeds only then (a syscall, no traffic)."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class TargetPolicy:
    """Which host:port the LB may call back: public addresses, or networks the operator allows."""

    def __init__(self, allowed_networks: tuple[str, ...], own_ports: set[int], public_url: str) -> None:
        self.allowed: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
        self.own_ports = {p for p in own_ports if p}
        public = urlsplit(public_url)
        self.public_origin = ((public.hostname or "").lower(), public.port or (443 if public.scheme == "https" else 80))

    def check_origin(self, host: str, port: int) -> None:
        if (host.lower().rstrip("."), port) == self.public_origin:
            raise TargetRefused("it points at the load balancer itself")

    def check_address(self, text: str, port: int) -> None:
        address = _address(text)
        if address is None:
            raise TargetRefused("it does not resolve to an IP address")
        if port in self.own_ports and _is_local(address):
            raise TargetRefused("it points at one of the load balancer's own listeners")
        if any(address in network for network in self.allowed if network.version == address.version):
            return
        if not address.is_global or address.is_multicast:
            kind = ("a loopback" if address.is_loopback else "a link-local" if address.is_link_local
                    else "a private or reserved")
            raise TargetRefused(f"it resolves to {kind} address ({address}) that callbacks.allowed_networks "
                                "does not allow")
        if _is_local(address):
            raise TargetRefused(f"it resolves to an address of the load balancer's machine ({address})")


def own_ports(config: Config) -> set[int]:
    """The LB's listeners: the API port, the admin port, mitmweb's port under ``run --web``."""
    return {p for p in (config.listen_port, config.admin.port, config.web_port) if p}


def split_target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; TargetRefused if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused("it is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise TargetRefused("it is not an http(s) URL")
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's threaded resolver, then refuses the whole answer if one address is refused."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self.policy.check_address(result["host"], port)
        return results

    async def close(self) -> None:
        await self._inner.close()


class OutboundClient:
    """The callback pool; create it inside the running event loop."""

    def __init__(self, config: CallbacksConfig, own_ports: set[int], public_url: str) -> None:
        self.config = config
        self.policy = TargetPolicy(config.allowed_networks, own_ports, public_url)
        self._resolver = GuardedResolver(self.policy)
        self.session = aiohttp.ClientSession(
            # No DNS cache: every connection is made to addresses checked for it.
            connector=aiohttp.TCPConnector(limit=config.max_connections, limit_per_host=config.max_per_host,
                                           use_dns_cache=False, resolver=self._resolver),
            timeout=aiohttp.ClientTimeout(total=config.timeout_s, connect=config.connect_timeout_s),
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "bbb-lb"},
            trust_env=False,
        )

    async def close(self) -> None:
        await self.session.close()

    async def check(self, url: str) -> None:
        """Refuse a target at once when it is refused now (create time). A name that does not resolve
        yet is let through: delivery checks again, and retries."""
        _, host, port = split_target(url)
        self.policy.check_origin(host, port)
        if _address(host) is not None:
            self.policy.check_address(host, port)
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                           self.config.connect_timeout_s)
        except (OSError, TimeoutError):
            return
        for info in infos:
            self.policy.check_address(str(info[4][0]), port)

    async def send(self, url: str, *, method: str = "GET", data: dict[str, str] | None = None) -> int:
        """Deliver one callback; answers the HTTP status. TargetRefused or DeliveryFailed otherwise."""
        _, host, port = split_target(url)
        self.policy.check_origin(host, port)
        if _address(host) is not None:  # aiohttp does not resolve a literal address: check it here
            self.policy.check_address(host, port)
        try:
            async with self.session.request(method, url, data=data, allow_redirects=False) as response:
                await self._drain(response)
                return response.status
        except TargetRefused:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise DeliveryFailed(describe(exc)) from None

    async def _drain(self, response: aiohttp.ClientResponse) -> None:
        """Read at most max_response_bytes; past that the connection is dropped rather than read on."""
        size = 0
        async for chunk in response.content.iter_chunked(1 << 14):
            size += len(chunk)
            if size > self.config.max_response_bytes:
                response.close()
                return


def describe_target(url: str) -> str:
    """Host and port only, for log lines: an integration's URL may carry its own tokens."""
    try:
        _, host, port = split_target(url)
    except TargetRefused:
        return "(invalid URL)"
    return f"{host}:{port}"

