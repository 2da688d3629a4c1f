"""Fixtures for end-to-end tests: simulated BBB servers and real ``bbb-lb run`` processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import yaml
from aiohttp import web
from redis.backoff import NoBackoff
from redis.retry import Retry

from lb_core import checksum

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def required_tool(path: str | None, what: str, package: str) -> str:
    """A program the tests need: without it a test is skipped on a developer's machine, but fails where
    ``CI`` is set (a CI run that silently skipped would report green for what nobody ran)."""
    if path is None:
        message = f"no {what} binary (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the tests that need it must run", pytrace=False)
        pytest.skip(message)
    return path


def require_chromium() -> str:
    return required_tool(CHROMIUM, "chromium", "chromium")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is not None:
        require_chromium()


def free_port() -> int:
    """A port nobody listens on (for "connection refused" checks). Never hand it to a child to bind:
    another process can take it in between. Children bind port 0 and report what they got; the two that
    cannot report one (redis-server, mitmweb's --web-port) are started again on another port when theirs
    was taken meanwhile (``RedisServer.start``, ``test_web.start_with_web_ui``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def xml(self):  # type: ignore[no-untyped-def]
        from lb_core import bbbxml
        return bbbxml.parse(self.body)

    def field(self, path: str) -> str:
        return self.xml().findtext(path) or ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 15.0) -> HttpReply:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return HttpReply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return HttpReply(error.code, dict(error.headers), error.read())


@dataclass
class Simulator:
    control_url: str
    servers: list[dict[str, Any]]
    process: subprocess.Popen[str]

    def control(self, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        reply = http(self.control_url + path, method=method or ("POST" if data is not None else "GET"), data=data,
                     headers={"Content-Type": "application/json"})
        assert reply.status < 300, (path, reply.status, reply.text)
        return json.loads(reply.body) if reply.body else None

    def reset(self) -> None:
        self.control("/reset", {})

    def fault(self, name: str, mode: str, delay_ms: int = 0) -> None:
        self.control(f"/servers/{name}/fault", {"mode": mode, "delay_ms": delay_ms})

    def meetings(self, name: str) -> list[str]:
        return next(s["meetings"] for s in self.control("/servers") if s["name"] == name)

    def requests(self, name: str) -> list[dict[str, Any]]:
        return self.control(f"/servers/{name}/requests")


def start_simulator(count: int) -> Simulator:
    return start_simulator_for([{"name": f"bbb{i + 1}", "url": "http://127.0.0.1:0/bigbluebutton/",
                                 "secret": f"secret-{i + 1}"} for i in range(count)])


@pytest.fixture(scope="session")
def sim() -> Iterator[Simulator]:
    simulator = start_simulator(5)
    yield simulator
    simulator.process.terminate()
    simulator.process.wait(10)


@dataclass
class LB:
    """A real ``bbb-lb run`` process."""

    config_path: Path
    config: dict[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    secret: str = "lb-secret"
    extra: dict[str, Any] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # appended to the ``run`` command line
    bound: dict[str, int] = field(default_factory=dict)  # the ports the process bound: listen, admin

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/bigbluebutton/api/"

    def start(self) -> LB:
        """Start ``bbb-lb run``; it binds its own ports (0 the first time) and reports them in a file.

        Whatever ports the config named are replaced: the first start binds free ports, a restart
        binds the ports of the previous start again (callbacks handed to BBB servers point there).
        """
        listen = self.config.setdefault("listen", {})
        listen["port"] = self.bound.get("listen", 0)
        if isinstance(self.config.get("admin"), dict) and "port" in self.config["admin"]:
            self.config["admin"]["port"] = self.bound.get("admin", 0)
        self.config_path.write_text(yaml.safe_dump(self.config))
        ports_path = self.config_path.with_name(self.config_path.stem + ".ports.json")
        ports_path.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "addons.cli", "run", "--config", str(self.config_path),
             "--ports-file", str(ports_path), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def reported() -> dict[str, Any] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"bbb-lb exited: {self.log_path.read_text()[-3000:]}")
            return json.loads(ports_path.read_text()) if ports_path.exists() else None

        ports = wait_for(reported, 30, what="bbb-lb to report its ports")
        self.bound = {name: port for name, port in ports.items() if port}
        listen["port"] = self.bound["listen"]
        if "admin" in self.bound:
            self.config["admin"]["port"] = self.bound["admin"]
        self.config_path.write_text(yaml.safe_dump(self.config))  # the CLI reads the admin port from here
        assert http(self.api.rstrip("/"), timeout=5).status == 200
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(15)
        self.process = None
        return code

    def restart(self) -> LB:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text()

    def sign(self, call: str, query: str = "", secret: str | None = None, algorithm: str = "sha1") -> str:
        return f"{self.api}{call}?{checksum.sign(call, query, secret or self.secret, algorithm)}"

    def call(self, call: str, params: dict[str, Any] | list[tuple[str, Any]] | str = "",
             secret: str | None = None, algorithm: str = "sha256", **kwargs: Any) -> HttpReply:
        query = params if isinstance(params, str) else urlencode(params)
        return http(self.sign(call, query, secret, algorithm), **kwargs)


def make_lb(tmp_path: Path, sim: Simulator, servers: list[int] | None = None, **overrides: Any) -> LB:
    chosen = sim.servers if servers is None else [sim.servers[i] for i in servers]
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},  # the process binds a free port and reports it
        "secret": "lb-secret",
        "servers": [dict(s) for s in chosen],
        "store": {"path": str(tmp_path / "lb.json")},
        "monitor": {"interval_s": 0.5, "timeout_s": 1.0, "down_after": 2, "up_after": 2},
    }
    config.update(overrides)
    return LB(tmp_path / "config.yaml", config, tmp_path / "lb.log")


@pytest.fixture
def lb_factory(tmp_path: Path, sim: Simulator) -> Iterator[Any]:
    started: list[LB] = []

    def factory(**kwargs: Any) -> LB:
        sim.reset()
        lb = make_lb(tmp_path, sim, **kwargs)
        started.append(lb)
        return lb.start()

    yield factory
    for lb in started:
        if lb.process is not None:
            lb.stop()


@pytest.fixture
def lb(lb_factory) -> LB:  # type: ignore[no-untyped-def]
    return lb_factory()


def start_simulator_for(servers: list[dict[str, Any]]) -> Simulator:
    """A simulator process for the given server specs ({"name", "url", "secret"}; any 127.x.y.z host on Linux).

    Port 0 in a URL, and for the control API, binds a free port; the URLs handed back carry the real ones.
    """
    spec = Path(tempfile.mkstemp(prefix="bbbsim-", suffix=".json")[1])
    spec.write_text(json.dumps(servers))
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "bbbsim.py"), "--spec", str(spec),
                                "--control-port", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    spec.unlink()
    assert "ready" in line, f"simulator did not start: {line!r}"
    simulator = Simulator(line.split()[-1], servers, process)
    bound = {s["name"]: s["url"] for s in simulator.control("/servers")}
    simulator.servers = [{**s, "url": bound[s["name"]]} for s in servers]
    return simulator


# --- a real redis-server (Debian's package) on a free loopback port --------------------------------------

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                                else None)


def require_redis() -> str:
    return required_tool(REDIS_SERVER, "redis-server", "redis-server")  # scripts/test installs it


class RedisServer:
    """One redis-server process with append-only persistence in its own folder, restartable on its port."""

    def __init__(self, folder: Path, password: str | None = None, tls: bool = False) -> None:
        self.folder = folder
        self.password = password
        self.tls = tls  # TLS only (rediss://), with a self-signed certificate for 127.0.0.1
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.folder / 'cert.pem'}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on the port of the previous start, or on a free one (a new one if it is taken meanwhile)."""
        binary = require_redis()
        for _attempt in range(20):
            port = self.port or free_port()
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                    "--dir", str(self.folder), "--daemonize", "no", "--loglevel", "warning", "--enable-debug-command", "local",
                    "--logfile", str(self.folder / "redis.log")]
            if self.password:
                args += ["--requirepass", self.password]
            if self.tls:
                self._certificate()
                args[1:3] = ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no",
                             "--tls-cert-file", str(self.folder / "cert.pem"),
                             "--tls-key-file", str(self.folder / "key.pem")]
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready(port):
                self.port = port
                return self
            self.process.kill()
            self.process.wait(5)
            if self.port:  # a restart must keep its port: the LB is configured with it
                time.sleep(0.1)
        raise AssertionError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False  # the port was taken (bind failure): try again
            try:
                if self.client(port, timeout=0.5).ping():
                    return True
            except redis.RedisError:
                time.sleep(0.02)
        return False

    def sleep_in_background(self, seconds: float) -> threading.Thread:
        """``DEBUG SLEEP`` from another thread; returns once the server has stopped answering."""
        sleeper = threading.Thread(target=lambda: self.client().execute_command("DEBUG", "SLEEP", str(seconds)))
        sleeper.start()

        def asleep() -> bool:
            try:
                self.client(timeout=0.05).ping()
            except redis.TimeoutError:
                return True
            return False

        wait_for(asleep, seconds, interval=0.01, what="redis-server to stop answering")
        return sleeper

    def client(self, port: int | None = None, timeout: float = 5.0) -> redis.Redis:
        """A plain (blocking) client, for a test to look at or steer the server; it does not retry."""
        tls = {"ssl": True, "ssl_ca_certs": str(self.folder / "cert.pem")} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=port or self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0), decode_responses=True,
                           retry=Retry(NoBackoff(), 0), **tls)

    def _certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (the client trusts it as its CA)."""
        if (self.folder / "cert.pem").exists():
            return
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        (self.folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.folder / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(15)
            self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart through their own key prefix (``redis_prefix``)."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses, so tests share one redis-server without seeing each other."""
    return f"test-{os.getpid()}-{abs(hash(request.node.nodeid)) % 10**12}-{time.monotonic_ns() % 10**9}"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: for tests that stop, restart or slow it down."""
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def raw_upload(lb: LB, headers: dict[str, str], body: bytes, *, send_only: int | None = None,
               timeout: float = 10) -> bytes:
    """An upload over a plain socket, so a client can also stop sending half-way (a truncated upload)."""
    host, port = "127.0.0.1", lb.port
    with socket.create_connection((host, port), timeout=timeout) as conn:
        head = "POST /bigbluebutton/lb/recordings HTTP/1.1\r\nHost: lb\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body[:send_only])
        if send_only is not None:
            return b""  # hang up mid-body
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
            if b"</response>" in data:
                break
        return data


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on a loopback port the kernel picks (port 0); yields that port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
