"""Calls to BBB servers: one shared aiohttp session, every call signed with that server's secret."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from lb_core import checksum
from lb_core.config_sections import ServerConfig
from lb_core.safe_errors import describe

# Headers a backend answer may carry through the LB; hop-by-hop and cookies stay behind.
PASS_HEADERS = ("Content-Type", "Content-Disposition", "Cache-Control")


class BackendError(Exception):
    """The server could not be reached or did not answer in time."""

    def __init__(self, server: str, message: str, *, timeout: bool = False, refused: bool = False) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.timeout = timeout
        self.refused = refused


@dataclass(slots=True)
class BackendReply:
    server: str
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float
    url_without_checksum: str


class BackendClient:
    """Owns the aiohttp session; create it inside the running event loop."""

    def __init__(self, timeout_s: float, connect_timeout_s: float, max_body_bytes: int, limit: int = 256) -> None:
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_body_bytes = max_body_bytes
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=64, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "bbb-lb"},
        )

    async def close(self) -> None:
        await self.session.close()

    def signed_url(self, server: ServerConfig, call: str, query: str) -> str:
        return f"{server.api_url}{call}?{checksum.sign(call, query, server.secret, server.checksum)}"

    async def call(
        self,
        server: ServerConfig,
        call: str,
        query: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> BackendReply:
        """``query`` is the exact query the backend should hash; only a checksum is added."""
        url = self.signed_url(server, call, query)
        headers = {"Content-Type": content_type} if content_type and body else {}
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(self.connect_timeout_s, timeout_s)) \
            if timeout_s else None
        started = time.perf_counter()
        try:
            # encoded=True: yarl would otherwise "normalise" %28, %21 ... and break the signed bytes.
            async with self.session.request(
                method, URL(url, encoded=True), data=body if body else None, headers=headers, allow_redirects=False,
                timeout=timeout if timeout else aiohttp.helpers.sentinel,
            ) as response:
                data = await self._read_all(response, server.name)
                reply_headers = {k: v for k in PASS_HEADERS if (v := response.headers.get(k))}
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    reply_headers["Location"] = response.headers["Location"]
                return BackendReply(server.name, response.status, reply_headers, data,
                                    (time.perf_counter() - started) * 1000, f"{server.api_url}{call}?{query}")
        except (TimeoutError, aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            # The exception's text names the signed URL: only its safe description goes on.
            raise BackendError(server.name, describe(exc), timeout=isinstance(exc, TimeoutError),
                               refused=isinstance(exc, aiohttp.ClientConnectorError)) from None

    async def _read_all(self, response: aiohttp.ClientResponse, server: str) -> bytes:
        """The whole body, refused past max_body_bytes (``content.read(n)`` would stop at what is buffered)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BackendError(server, "answer larger than backend.max_body_bytes")
            chunks.append(chunk)
        return b"".join(chunks)
