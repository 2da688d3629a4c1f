"""``bbb-lb run``: mitmproxy embedded in reverse mode with only the addons the load balancer needs."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig

from addons.admin import AdminListener
from addons.bbb_lb import make_addons
from addons.lb import BbbLoadBalancer
from addons.limits import install_body_guard
from lb_core import logs
from lb_core.config import Config
from lb_core.store import StoreError, make_store

REPO = Path(__file__).resolve().parent.parent
SIMULATOR = REPO / "scripts" / "bbbsim.py"
log = logging.getLogger("bbb_lb")
DRAIN_TIMEOUT_S = 10.0  # on SIGTERM, for the calls being answered; the systemd unit's TimeoutStopSec is 20
STOP_DEADLINE_S = 18.0  # SIGTERM to exit, at most: a stop still running then is ended, before systemd's SIGKILL


class StartError(Exception):
    """bbb-lb cannot start; the message is the one line the operator sees (exit code 2)."""


def check_port(host: str, port: int, what: str) -> None:
    """Fail early, in one line, when a port the LB needs is taken (bound as asyncio's servers bind)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartError(f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}") from None


def check_ports(config: Config) -> None:
    check_port(config.listen_host, config.listen_port, "listen.port")
    if config.admin.port is not None:
        check_port(config.admin.host, config.admin.port, "admin.port")
        if config.admin.port == config.listen_port and config.admin.port:
            raise StartError(f"admin.port and listen.port are both {config.listen_port}")


def stop_simulators(simulator: subprocess.Popen[str] | None) -> None:
    if simulator is not None:
        simulator.terminate()
        try:
            simulator.wait(5)
        except subprocess.TimeoutExpired:
            simulator.kill()


def start_simulators(config: Config) -> subprocess.Popen[str] | None:
    """Start the simulated BBB servers the config marks with ``simulate: true``.

    Their control API listens on a free port, so two configs with simulated servers run side by side.
    """
    simulated = [s for s in config.servers if s.simulate]
    if not simulated:
        return None
    spec = [{"name": s.name, "url": s.url, "secret": s.secret} for s in simulated]
    handle, spec_path = tempfile.mkstemp(prefix="bbb-lb-sim-", suffix=".json")
    with os.fdopen(handle, "w") as f:
        json.dump(spec, f)
    process = subprocess.Popen(
        [sys.executable, str(SIMULATOR), "--spec", spec_path, "--control-port", "0"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    os.unlink(spec_path)
    if "ready" not in line:
        process.kill()
        process.wait()
        said = [t.strip() for t in process.stderr.read().splitlines() if t.strip()]
        cause = said[-1].removeprefix("bbbsim: ") if said else f"exit code {process.returncode}"
        raise StartError(f"the simulated BBB servers cannot start: {cause}")
    threading.Thread(target=_relay, args=(process.stderr,), name="bbbsim-stderr", daemon=True).start()
    log.info("started %d simulated BBB servers: %s (control API %s)", len(simulated),
             ", ".join(s.name for s in simulated), line.split()[-1])
    return process


def _relay(stream) -> None:  # type: ignore[no-untyped-def]
    """The simulator's own messages go to our log (and its pipe never fills up)."""
    for text in stream:
        if text.strip():
            logging.getLogger("bbb_lb.sim").warning("%s", text.rstrip())


class StartCheck(errorcheck.ErrorCheck):
    """mitmproxy's start-up check, ending bbb-lb with one line and exit code 2 instead of a report."""

    name = "errorcheck"

    async def shutdown_if_errored(self) -> None:
        await asyncio.sleep(0)
        if self.logger.has_errored:
            message = self.logger.has_errored[0].getMessage()
            print(f"bbb-lb: {_one_line(message)}", file=sys.stderr, flush=True)
            sys.exit(2)


def _one_line(message: str) -> str:
    bind = re.search(r"failed to listen on (\S+) with .*?: (\S.*)$", message.splitlines()[0])
    if bind:
        return f"cannot listen on {bind.group(1)} (listen.port): {bind.group(2)}"
    return message.splitlines()[0] if message else "an error was logged during start-up"


class AdoptBoundPort:
    """With ``listen.port: 0`` the proxy binds a free port: the LB takes it as its own before it starts.

    Runs before the load balancer's addon, once the proxy listens, so that the default ``public_url``
    (the address BBB servers call back) carries the real port, not 0.
    """

    def __init__(self, lb: BbbLoadBalancer) -> None:
        self.lb = lb
        self.port = 0

    def running(self) -> None:
        config = self.lb.config
        proxy = ctx.master.addons.get("proxyserver")
        ports = [addr[1] for addr in proxy.listen_addrs()] if proxy is not None else []
        if config is None or not ports:
            return
        self.port = ports[0]
        if config.listen_port == 0:
            self.lb.config = config.with_listen_port(self.port)
        logging.getLogger("bbb_lb").info("bbb-lb listening on http://%s:%d%s", config.listen_host, self.port,
                                         "/bigbluebutton/api")


class FreezeStartupHeap:
    """Once the LB serves, what start-up built (modules, mitmproxy, config, the loaded store) is moved
    out of the cyclic GC's reach: every full collection would walk those objects again for nothing,
    a pause of tens of milliseconds in the middle of API calls."""

    frozen = 0

    def running(self) -> None:
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()


class PortsFile:
    """Writes the bound ports as JSON once every listener is up: how a test or script finds port 0's choice."""

    def __init__(self, path: str, adopt: AdoptBoundPort, admin: AdminListener | None) -> None:
        self.path = path
        self.adopt = adopt
        self.admin = admin

    def running(self) -> None:
        server = self.admin.server if self.admin is not None else None
        ports = {"listen": self.adopt.port, "admin": server.port if server is not None else None}
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(ports, handle)
        os.replace(tmp, self.path)  # readers never see half a file


def build_options(config: Config) -> options.Options:
    return options.Options(
        mode=["reverse:http://127.0.0.1:9"],  # never contacted: every flow is answered by the addon
        listen_host=config.listen_host,
        listen_port=config.listen_port,
    )


async def serve(config: Config, *, web: bool = False, web_port: int = 8081, web_password: str = "",
                save_file: str = "", save_max_mb: float = 100.0, save_keep: int = 5, mask_passwords: bool = False,
                extra_addons: list[object] | None = None, ports_file: str = "", worker: bool = False) -> None:
    if worker:  # one of several processes on one port
        from addons.workers import share_listen_port

        share_listen_port()
    if web:  # callbacks must never reach mitmweb's port either
        config = config.with_web_port(web_port)
    opts = build_options(config)
    chain = make_addons(inspect=web or bool(save_file)) + list(extra_addons or [])
    lb = chain[0]
    assert isinstance(lb, BbbLoadBalancer)
    adopt = AdoptBoundPort(lb)
    admin = next((a for a in chain if isinstance(a, AdminListener)), None)
    # FreezeStartupHeap after the LB: its ``running`` has started the LB (awaited) by then.
    chain = [adopt, *chain, FreezeStartupHeap()] + ([PortsFile(ports_file, adopt, admin)] if ports_file else [])
    if web:
        from mitmproxy.tools.web.master import WebMaster

        from addons import webauth

        m: master.Master = WebMaster(opts, with_termlog=False)
        m.addons.add(*chain)
        opts.update(web_host="127.0.0.1", web_port=web_port, web_open_browser=False)  # loopback only
        password, generated = webauth.resolve_password(web_password)
        webauth.protect_web(m, opts, password, generated, web_port)
    else:
        m = master.Master(opts)
        m.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
                     StartCheck(), *chain)
    lb.config = config
    # The store first: a locked or unreadable store stops the start before any port is opened. The LB
    # itself starts once the proxy listens (AdoptBoundPort gives it the real port first).
    try:
        store = make_store(config)
        await store.open()
    except StoreError as exc:
        raise StartError(str(exc)) from None
    lb.store = store
    # Bodies are measured per call as they stream in (addons.limits); mitmproxy's one global limit is only
    # the fallback should that guard not fit this mitmproxy version. HTTP/2 is off: the BBB API is HTTP/1.1
    # and only the HTTP/1 protocol-error answers are ours.
    body_size_limit = None if install_body_guard() else str(config.limits.max_upload_bytes)
    opts.update(connection_strategy="lazy", body_size_limit=body_size_limit, http2=False)
    if save_file:  # addons.capture.Capture (in the chain) writes it, off the event loop and rotated
        opts.update(bbb_save_file=save_file, bbb_save_max_mb=str(save_max_mb), bbb_save_keep=save_keep,
                    bbb_mask_passwords=mask_passwords)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if stopping:  # a second SIGTERM or Ctrl-C: stop now
            m.shutdown()
            return
        loop.set_exception_handler(_quiet_cancelled)
        stopping.append(loop.create_task(stop_gracefully(m, lb), name="bbb-lb graceful stop"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await m.run()
    finally:  # a start given up after the store was opened still flushes and unlocks it
        if lb.lb is not None:
            await lb.lb.stop()
            lb.lb = None
        await store.close()


def arm_stop_deadline(loop: asyncio.AbstractEventLoop, seconds: float = STOP_DEADLINE_S,
                      exit_now: Callable[[int], object] = os._exit) -> threading.Timer:
    """The last resort of a stop: every step is bounded, but should one still hang (a library ignoring its
    timeout), the process says where every task and thread was, then exits 1 on its own, before systemd's
    SIGKILL: the operator gets a cause in the journal, not a silent kill. A daemon thread: it never delays
    an exit."""

    def expired() -> None:
        out = sys.stderr
        try:
            print(f"bbb-lb: the stop did not finish within {seconds:g} s; exiting now. Pending tasks:",
                  file=out, flush=True)
            for task in list(asyncio.all_tasks(loop)):
                task.print_stack(limit=12, file=out)
            print("Threads:", file=out, flush=True)
            faulthandler.dump_traceback(file=out, all_threads=True)
            out.flush()
        finally:
            exit_now(1)

    timer = threading.Timer(seconds, expired)
    timer.name = "bbb-lb stop deadline"
    timer.daemon = True
    timer.start()
    return timer


async def stop_gracefully(m: master.Master, lb: BbbLoadBalancer) -> None:
    """SIGTERM: listen no more, let the calls being answered finish (and their store writes with them),
    then stop; the store is flushed and unlocked on the way out, all within ``STOP_DEADLINE_S``."""
    arm_stop_deadline(asyncio.get_running_loop())
    log.info("stopping: no new connections, %d API calls being answered", lb.in_flight)
    try:
        proxy = m.addons.get("proxyserver")
        if proxy is not None:
            await proxy.servers.update([])  # closes the listening sockets; open connections go on
        left = await lb.drained(DRAIN_TIMEOUT_S)
        if left:
            log.warning("stopping with %d API calls unanswered after %.0f s", left, DRAIN_TIMEOUT_S)
    finally:
        m.shutdown()


def _quiet_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """While stopping, idle client connections are cancelled; Python 3.11's streams log each as an error
    with a traceback (3.12 does not). Anything else still goes to the default handler."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def run(config: Config, **kwargs: object) -> int:
    """Serve until stopped; a start that cannot succeed raises ``StartError`` (one line for the operator)."""
    logs.setup(config.log_level)
    worker = bool(kwargs.get("worker"))
    if not worker:  # a worker's port is held (SO_REUSEPORT) by its supervisor, which runs the simulators
        check_ports(config)
    if kwargs.get("web"):
        check_port("127.0.0.1", int(kwargs.get("web_port", 8081)), "--web-port")  # type: ignore[call-overload]
    simulator = None if worker else start_simulators(config)
    try:
        asyncio.run(serve(config, **kwargs))  # type: ignore[arg-type]
    finally:
        stop_simulators(simulator)
    return 0
