"""Baseline mitmproxy masters for the benchmark (issue 7).

bbb-lb is built on mitmproxy, so its throughput can never beat a bare mitmproxy master doing
(almost) nothing. These masters are that floor, built exactly like the lean master of
docs/mitmproxy-notes.md section 2.5: ``master.Master`` plus Core, Proxyserver, NextLayer, TlsConfig,
ErrorCheck and one tiny addon, ``connection_strategy=lazy``.

    --mode local    answer every request locally with a fixed small XML (no upstream at all)
    --mode forward  reverse-proxy every request to --upstream (the route cost of a balancer)

Prints ``lean_baseline ready http://127.0.0.1:<port>`` once listening; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from urllib.parse import urlsplit

from mitmproxy import http, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

LOCAL_XML = b"<response><returncode>SUCCESS</returncode><running>false</running></response>"
LOCAL_HEADERS = {"Content-Type": "text/xml;charset=utf-8", "Cache-Control": "no-cache"}
# Local mode never connects upstream; reverse mode still needs a syntactically valid target.
UNUSED_TARGET = "http://127.0.0.1:9"


class LocalAnswer:
    """Answer in the ``request`` hook, where bbb-lb answers its local calls."""

    def request(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(200, LOCAL_XML, LOCAL_HEADERS)


class Route:
    """Set the upstream per request, as a balancer does after picking a backend."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.scheme = parts.scheme or "http"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.scheme == "https" else 80)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        flow.request.scheme = self.scheme
        flow.request.host = self.host
        flow.request.port = self.port


class Ready:
    """Print the ready line once the listener is bound, with the real port (port 0 allowed)."""

    def running(self) -> None:
        from mitmproxy import ctx

        ps = ctx.master.addons.get("proxyserver")
        addrs = ps.listen_addrs() if ps else []
        port = addrs[0][1] if addrs else ctx.options.listen_port
        print(f"lean_baseline ready http://127.0.0.1:{port}", flush=True)


async def serve(mode: str, listen_port: int, upstream: str | None) -> None:
    target = upstream if mode == "forward" and upstream else UNUSED_TARGET
    opts = options.Options(mode=[f"reverse:{target}"], listen_host="127.0.0.1", listen_port=listen_port)
    m = master.Master(opts)
    m.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
    )
    m.addons.add(LocalAnswer() if mode == "local" else Route(target), Ready())
    opts.update(connection_strategy="lazy")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, m.shutdown)
    await m.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("local", "forward"), required=True)
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--upstream", help="upstream base URL for --mode forward")
    args = parser.parse_args(argv)
    if args.mode == "forward" and not args.upstream:
        parser.error("--mode forward needs --upstream")
    asyncio.run(serve(args.mode, args.listen_port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
