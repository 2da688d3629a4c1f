"""``bbb-lb run --workers N``: N processes serving one ``listen`` port, all on the shared (Redis) store.

Each worker is a whole ``bbb-lb run`` (its own event loop, core and mitmproxy) binding the same port with
``SO_REUSEPORT``, so the kernel spreads connections over them. mitmproxy binds its reverse-proxy port with
``asyncio.start_server`` and no way to ask for that option: ``share_listen_port`` makes its reverse mode
bind with it, in the workers only. The supervisor (this module's ``supervise``) starts the simulated
servers once, picks the port when ``listen.port`` is 0, gives worker ``i`` the admin port
``admin.port + i`` (each worker's own ``/metrics``, labelled with its node id), restarts a worker that
dies, and stops them all on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lb_core.config import Config

log = logging.getLogger("bbb_lb.workers")

READY_TIMEOUT_S = 60.0
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 15.0


def refusal(config: Config, workers: int, *, web: bool, save: bool) -> str | None:
    """Why ``workers`` processes cannot run with this config and these options (None: they can)."""
    if workers <= 1:
        return None
    if config.store.backend != "redis":
        return (f"--workers {workers} needs store.backend: redis: the embedded TinyDB store is one process's "
                "file, so each worker would keep its own meetings and route the others' calls nowhere")
    if web:
        return "--web watches one process's traffic: run it without --workers"
    if save:
        return "--save writes one process's flows: run it without --workers"
    if not hasattr(socket, "SO_REUSEPORT"):
        return "--workers needs SO_REUSEPORT (Linux)"
    return None


def share_listen_port() -> None:
    """Make mitmproxy's reverse mode bind its TCP port with SO_REUSEPORT (several workers, one port)."""
    from mitmproxy.proxy import mode_servers

    instance = mode_servers.ReverseInstance
    if getattr(instance, "_bbb_lb_reuse_port", False):
        return

    async def listen(self, host: str, port: int) -> list[Any]:  # type: ignore[no-untyped-def]
        if self.mode.transport_protocol != "tcp" or port == 0:
            return await mode_servers.AsyncioServerInstance.listen(self, host, port)
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    instance.listen = listen  # type: ignore[method-assign]
    instance._bbb_lb_reuse_port = True  # type: ignore[attr-defined]


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) with SO_REUSEPORT: picks the port for 0 and keeps it ours until the
    workers listen on it (a bound socket that does not listen takes none of their connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((host, port))
    return held


class Worker:
    def __init__(self, index: int, argv: list[str], ports_file: Path) -> None:
        self.index = index
        self.argv = argv
        self.ports_file = ports_file
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, Any] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.ports_file.unlink(missing_ok=True)
        self.ports = None
        self.process = subprocess.Popen([*self.argv, "--ports-file", str(self.ports_file)])

    def reported(self) -> dict[str, Any] | None:
        if self.ports is None and self.ports_file.exists():
            self.ports = json.loads(self.ports_file.read_text())
        return self.ports


def worker_argv(config_path: str, index: int, listen_port: int, admin_port: int | None,
                extra: list[str]) -> list[str]:
    optimise = ["-O"] if sys.flags.optimize else []  # as the supervisor runs (see addons.cli.optimised_argv)
    argv = [sys.executable, *optimise, "-m", "addons.cli", "run", "--config", config_path,
            "--worker-index", str(index), "--listen-port", str(listen_port)]
    if admin_port is not None:
        argv += ["--admin-port", str(admin_port)]
    return argv + extra


def supervise(config: Config, config_path: str, workers: int, *, ports_file: str = "",
              extra: list[str] | None = None) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; 2 when they cannot start."""
    from addons.runner import StartError, check_ports, start_simulators, stop_simulators
    from lb_core import logs

    logs.setup(config.log_level)
    check_ports(config)
    held = hold_port(config.listen_host, config.listen_port)
    port = held.getsockname()[1]
    simulator = start_simulators(config)
    folder = Path(ports_file).parent if ports_file else Path("/tmp")
    stem = Path(ports_file).name if ports_file else f"bbb-lb-{os.getpid()}"
    admin = config.admin.port
    pool = [Worker(i, worker_argv(config_path, i, port, None if admin is None else (admin + i if admin else 0),
                                  list(extra or [])), folder / f"{stem}.worker{i}")
            for i in range(workers)]
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for worker in pool:
            worker.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(w.reported() for w in pool):
            for worker in pool:
                assert worker.process is not None
                if worker.process.poll() is not None:
                    raise StartError(f"worker {worker.index} exited during start (exit code "
                                     f"{worker.process.returncode})")
            if time.monotonic() > deadline or stopping:
                raise StartError("the workers did not all start listening in time")
            time.sleep(0.05)
        held.close()
        log.info("bbb-lb: %d workers listening on http://%s:%d (pids %s)", workers, config.listen_host, port,
                 ", ".join(str(w.process.pid) for w in pool if w.process is not None))
        if ports_file:
            admin_ports = [w.ports.get("admin") for w in pool if w.ports]
            report = {"listen": port, "admin": admin_ports[0] if admin_ports else None,
                      "workers": [{"pid": w.process.pid if w.process else None, "admin": (w.ports or {}).get("admin")}
                                  for w in pool]}
            tmp = f"{ports_file}.tmp-{os.getpid()}"
            Path(tmp).write_text(json.dumps(report))
            os.replace(tmp, ports_file)
        while not stopping:
            for worker in pool:
                assert worker.process is not None
                code = worker.process.poll()
                if code is not None and not stopping:
                    worker.restarts += 1
                    log.error("worker %d (pid %d) exited with code %s: restarting it", worker.index,
                              worker.process.pid, code)
                    time.sleep(RESTART_DELAY_S)
                    worker.start()
            time.sleep(0.2)
        return 0
    finally:
        held.close()
        _stop_all(pool)
        for worker in pool:
            worker.ports_file.unlink(missing_ok=True)
        stop_simulators(simulator)


def _stop_all(pool: list[Worker]) -> None:
    running = [w.process for w in pool if w.process is not None and w.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
