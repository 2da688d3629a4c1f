"""Benchmark harness (issue 7): wrk against bbb-lb and the baselines it is judged by.

Every figure is only meaningful next to its floor, so each run measures the baselines too:

    sim-direct    isMeetingRunning straight to a simulator server (no proxy at all)
    lean-local    a bare lean mitmproxy master answering locally (the floor of anything on mitmproxy)
    lean-forward  the same lean master reverse-proxying to the simulator

BBB URLs are signed, so request paths are precomputed (lb_core.checksum.sign) and fed to wrk by a
generated Lua script that cycles through them. Each case runs at concurrency 1 and 32.

Adding a case: append a ``Case`` to ``registry()`` (or ``bbb_lb_cases``). Its ``setup`` coroutine
starts what it needs through ``Env`` (children are killed after the case) and returns a ``Target``
with the base URL and the signed paths::

    async def setup(env: Env) -> Target:
        sim, lb, ids = await lb_with_meetings(env, servers=3, meetings=100)
        return Target(lb.url, per_meeting_paths(lb, "getMeetingInfo", ids), pids=lb_pids(lb, sim))

    Case("lb-my-case", "what it measures", setup=setup, baseline="lean-forward")

Results: a table on stdout and bench-results/bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import inspect
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lb_core import checksum  # noqa: E402  (the repo root must be importable from a fresh clone)

RESULTS_DIR = REPO / "bench-results"
SIMULATOR = REPO / "scripts" / "bbbsim.py"
LEAN = REPO / "scripts" / "lean_baseline.py"
API = "/bigbluebutton/api/"
LB_SECRET = "bench-lb-secret-0123456789abcdef"
CONCURRENCY: tuple[tuple[int, int], ...] = ((1, 1), (2, 32))  # (wrk threads, connections)
MAX_PATHS = 200_000  # more than any run can send; generators are cut here
WRK_TIMEOUT = "5s"  # per-request timeout; slower answers count as timeout errors
READY_TIMEOUT = 60.0
RATIO_COLUMNS = ("lean-local", "sim-direct")  # every row gets a ratio against these two


# --------------------------------------------------------------------------------------------
# Child processes: every one is registered so nothing outlives the bench, even after Ctrl-C.
# --------------------------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    _LIVE.pop(proc.pid, None)


def kill_all() -> None:
    """Last line of defence, run at exit: stop whatever a finally block did not."""
    for proc in list(_LIVE.values()):
        _stop(proc, grace=1.0)


atexit.register(kill_all)


def popen(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (killpg reaches its children), output to ``log``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
    _LIVE[proc.pid] = proc
    return proc


@dataclass
class Child:
    """A started helper process and the first line it printed that matched its ready pattern."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_line: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        _stop(self.proc)


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 now (bind to 0, read it, release it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200; used as a readiness probe."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


# --------------------------------------------------------------------------------------------
# Signed paths
# --------------------------------------------------------------------------------------------


def signed_path(call: str, params: Iterable[tuple[str, str]] | str, secret: str) -> str:
    """``/bigbluebutton/api/<call>?<query>&checksum=...`` signed the one way the project signs."""
    query = params if isinstance(params, str) else urlencode(list(params))
    return f"{API}{call}?{checksum.sign(call, query, secret)}"


# --------------------------------------------------------------------------------------------
# Simulator handle
# --------------------------------------------------------------------------------------------


@dataclass
class SimServer:
    name: str
    url: str  # base URL ending in /bigbluebutton/
    secret: str

    @property
    def origin(self) -> str:
        return self.url.split("/bigbluebutton/")[0]


@dataclass
class Sim:
    """A running simulator cluster (scripts/bbbsim.py) as the bench sees it."""

    servers: list[SimServer]
    control_url: str
    child: Child


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

PathSource = Sequence[str] | Callable[[], Iterable[str]]


@dataclass
class Target:
    """What one case loads: a base URL (scheme://host:port) and the paths wrk cycles through."""

    url: str
    paths: PathSource
    pids: dict[str, int] = field(default_factory=dict)  # processes whose CPU use is reported
    note: str = ""


@dataclass
class Case:
    """One benchmark. ``setup`` (async, gets the Env) may return a Target that fills url/paths.

    name      unique, used by --only and as a baseline reference
    url       base URL when it is known without setup (an external deployment)
    paths     signed request paths, or a zero-argument generator (cut at MAX_PATHS)
    setup     (env) -> Target | None, plain or async; start children with env.spawn / env.sim / env.bbb_lb
    baseline  another case whose req/s gives the extra "x base" ratio column
    """

    name: str
    about: str = ""
    url: str | None = None
    paths: PathSource | None = None
    setup: Callable[[Env], Awaitable[Target | None] | Target | None] | None = None
    baseline: str | None = None
    concurrency: tuple[tuple[int, int], ...] = CONCURRENCY


@dataclass
class Result:
    case: str
    threads: int
    conns: int
    rps: float = 0.0
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    duration_s: float = 0.0
    socket_errors: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    failed_bodies: int = 0
    errors: int = 0
    cpu_pct: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None
    ratio_lean_local: float | None = None
    ratio_sim_direct: float | None = None
    ratio_baseline: float | None = None
    note: str = ""
    error: str | None = None


# --------------------------------------------------------------------------------------------
# Environment given to setups
# --------------------------------------------------------------------------------------------


class Env:
    """Spawns children for one run; case-scoped ones are stopped after each case."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.python = sys.executable
        self._run_children: list[Child] = []
        self._case_children: list[Child] = []
        self.background: list[asyncio.Task[None]] = []  # a case's own load beside wrk, cancelled after it
        self._sims: dict[int, Sim] = {}
        self._redis: tuple[str, int] | None = None
        self._counter = itertools.count(1)

    def new_dir(self, prefix: str) -> Path:
        path = self.workdir / f"{prefix}-{next(self._counter)}"
        path.mkdir(parents=True)
        return path

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_line: str | None = None,
        ready_url: str | None = None,
        shared: bool = False,
        timeout: float = READY_TIMEOUT,
    ) -> Child:
        """Start a child and wait until it prints ``ready_line`` and/or ``ready_url`` answers 200."""
        log = self.workdir / f"{name}-{next(self._counter)}.log"
        child = Child(name, popen(argv, log), log)
        (self._run_children if shared else self._case_children).append(child)
        deadline = time.monotonic() + timeout
        while True:
            if child.proc.poll() is not None:
                tail = child.tail()
                last = tail.splitlines()[-1] if tail else ""
                raise RuntimeError(f"{name} exited with {child.proc.returncode}: {last}\n{tail}")
            if ready_line and not child.ready_line:
                for line in log.read_text(errors="replace").splitlines():
                    if ready_line in line:
                        child.ready_line = line.strip()
                        break
            line_ok = not ready_line or bool(child.ready_line)
            if line_ok and (not ready_url or await http_ok(ready_url)):
                return child
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{child.tail()}")
            await asyncio.sleep(0.05)

    async def sim(self, servers: int = 1, *, fresh: bool = False, timeout: float = READY_TIMEOUT) -> Sim:
        """A simulator cluster of ``servers`` servers; shared across cases unless ``fresh``."""
        if not fresh and servers in self._sims and self._sims[servers].child.proc.poll() is None:
            return self._sims[servers]
        if not SIMULATOR.exists():
            raise RuntimeError(f"{SIMULATOR.relative_to(REPO)} does not exist yet")
        # Port 0 everywhere: the simulator binds free ports itself and reports them.
        argv = [self.python, str(SIMULATOR), "--servers", str(servers), "--base-port", "0", "--control-port", "0"]
        child = await self.spawn(f"bbbsim{servers}", argv, ready_line="bbbsim ready", shared=not fresh,
                                 timeout=timeout)
        control_url = child.ready_line.split()[-1].rstrip("/")
        sim = Sim(servers=await sim_servers(child, control_url), control_url=control_url, child=child)
        if not fresh:
            self._sims[servers] = sim
        return sim

    async def redis(self) -> tuple[str, int]:
        """One redis-server for the run (append-only, fsync every second, as in production); each case
        keeps apart through its own key prefix. Its URL and pid."""
        if self._redis is None:
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
            if not Path(binary).exists():
                raise RuntimeError("no redis-server (apt-get install redis-server)")
            port = free_port()
            folder = self.new_dir("redis")
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                    "--appendfsync", "everysec", "--dir", str(folder), "--logfile", ""]
            child = await self.spawn("redis", argv, ready_line="Ready to accept connections", shared=True)
            self._redis = (f"redis://127.0.0.1:{port}/0", child.pid)
        return self._redis

    async def lean(self, mode: str, upstream: str | None = None) -> Child:
        """A lean mitmproxy master (scripts/lean_baseline.py); its URL is in the ready line."""
        argv = [self.python, str(LEAN), "--mode", mode, "--listen-port", "0"]
        if upstream:
            argv += ["--upstream", upstream]
        return await self.spawn(f"lean-{mode}", argv, ready_line="lean_baseline ready")

    async def bbb_lb(self, sim: Sim, **kwargs: Any) -> BbbLb:
        """bbb-lb in front of ``sim`` (see start_bbb_lb for the keyword arguments)."""
        return await start_bbb_lb(self, sim, **kwargs)

    def end_case(self) -> None:
        for task in self.background:
            task.cancel()
        self.background.clear()
        for child in reversed(self._case_children):
            child.stop()
        self._case_children.clear()

    def end_run(self) -> None:
        self.end_case()
        for child in reversed(self._run_children):
            child.stop()
        self._run_children.clear()
        self._sims.clear()


async def sim_servers(child: Child, control_url: str) -> list[SimServer]:
    """The servers of a started simulator, with their real ports, from its control API."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{control_url}/servers") as resp,
        ):
            items = await resp.json(content_type=None)
            return [SimServer(name=str(s["name"]), url=str(s["url"]), secret=str(s["secret"])) for s in items]
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot list simulator servers at {control_url}: {exc!r}\n{child.tail()}") from exc


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

LUA_TEMPLATE = r"""-- generated by scripts/bench.py: cycle through signed paths, count status classes
local paths = {}
for line in io.lines("%(paths_file)s") do paths[#paths + 1] = line end
local n = #paths
local i = 0
local threads = {}
local counter = 0
c2, c3, c4, c5, cx, failed = 0, 0, 0, 0, 0, 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  -- each run and each thread starts in its own slice of the paths, so cases that create
  -- new meetings never repeat an ID while the paths last (args: run offset, thread stride)
  local base = tonumber(args[1]) or 0
  local stride = tonumber(args[2]) or 0
  i = (base + ((tid or 1) - 1) * stride) %% n
end

function request()
  i = i %% n + 1
  return wrk.format("GET", paths[i])
end

function response(status, headers, body)
  if status < 200 then cx = cx + 1
  elseif status < 300 then c2 = c2 + 1
  elseif status < 400 then c3 = c3 + 1
  elseif status < 500 then c4 = c4 + 1
  elseif status < 600 then c5 = c5 + 1
  else cx = cx + 1 end
  if body and string.find(body, "<returncode>FAILED", 1, true) then failed = failed + 1 end
end

function done(summary, latency, requests)
  local t = {c2 = 0, c3 = 0, c4 = 0, c5 = 0, cx = 0, failed = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
  end
  io.write(string.format("BENCH_STATUS 2xx=%%d 3xx=%%d 4xx=%%d 5xx=%%d other=%%d failed=%%d\n",
    t.c2, t.c3, t.c4, t.c5, t.cx, t.failed))
end
"""

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY_LINE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL_LINE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET_LINE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX_LINE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_STATUS_LINE = re.compile(r"BENCH_STATUS (.*)")


def to_ms(value: str, unit: str) -> float:
    """wrk prints times as 722.00us, 1.08ms, 2.10s, 1.00m; everything becomes milliseconds."""
    return float(value) * _TIME_UNITS[unit]


def parse_wrk(output: str, result: Result) -> None:
    """Fill ``result`` from ``wrk --latency`` output plus our Lua BENCH_STATUS line."""
    for pct, value, unit in _LATENCY_LINE.findall(output):
        setattr(result, f"p{pct}_ms", round(to_ms(value, unit), 3))
    if m := _RPS_LINE.search(output):
        result.rps = float(m.group(1))
    if m := _TOTAL_LINE.search(output):
        result.requests = int(m.group(1))
        result.duration_s = round(to_ms(m.group(2), m.group(3)) / 1e3, 3)
    if m := _SOCKET_LINE.search(output):
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    if m := _STATUS_LINE.search(output):
        counts = dict(kv.split("=") for kv in m.group(1).split())
        result.failed_bodies = int(counts.pop("failed"))
        result.status = {k: int(v) for k, v in counts.items()}
    non_ok = sum(result.status.get(k, 0) for k in ("4xx", "5xx", "other"))
    if not result.status and (m := _NON_2XX_LINE.search(output)):
        non_ok = int(m.group(1))
    result.errors = sum(result.socket_errors.values()) + non_ok + result.failed_bodies


def cpu_seconds(pid: int) -> float | None:
    """utime+stime of one process from /proc (Linux); None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


async def run_wrk(url: str, script: Path, threads: int, conns: int, duration: float, log: Path,
                  pids: dict[str, int], offset: int = 0, stride: int = 0) -> tuple[str, dict[str, float]]:
    """Run one bounded wrk load; return its output and the CPU use (% of a core) of ``pids`` meanwhile."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", f"--timeout={WRK_TIMEOUT}", "--latency",
            "-s", str(script), url.rstrip("/") + "/", "--", str(offset), str(stride)]
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    proc = popen(argv, log)
    try:
        deadline = started + duration + 30
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"wrk did not finish within {duration + 30:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        _stop(proc)
    elapsed = time.monotonic() - started
    output = log.read_text(errors="replace")
    cpu: dict[str, float] = {}
    for name, pid in pids.items():
        after = cpu_seconds(pid)
        if before[name] is not None and after is not None:
            cpu[name] = round(100 * (after - before[name]) / elapsed, 1)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {output.strip()[-500:]}")
    return output, cpu


async def probe(url: str, path: str) -> str | None:
    """One request before the load: a broken case should say why, not report fast errors."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url.rstrip("/") + path, allow_redirects=False) as resp,
        ):
            body = await resp.text(errors="replace")
            if resp.status >= 400 or "<returncode>FAILED" in body:
                return f"probe {path[:80]} -> HTTP {resp.status}: {body[:300]}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"probe {path[:80]} failed: {exc!r}"
    return None


def materialise(paths: PathSource) -> list[str]:
    items = list(itertools.islice(paths() if callable(paths) else paths, MAX_PATHS))
    if not items:
        raise ValueError("case produced no request paths")
    for p in items:
        if not p.startswith("/") or any(c in p for c in "\r\n\"\\") or not p.isascii():
            raise ValueError(f"unusable request path {p[:80]!r}")
    return items


# --------------------------------------------------------------------------------------------
# Baseline cases
# --------------------------------------------------------------------------------------------


def is_meeting_running_paths(server: SimServer, count: int = 1000) -> list[str]:
    """isMeetingRunning over many meeting IDs: realistic cache behaviour, no single hot key."""
    return [signed_path("isMeetingRunning", [("meetingID", f"bench-{i}")], server.secret) for i in range(count)]


async def setup_sim_direct(env: Env) -> Target:
    sim = await env.sim(1)
    server = sim.servers[0]
    return Target(server.origin, is_meeting_running_paths(server), pids={"sim": sim.child.pid})


async def setup_lean_local(env: Env) -> Target:
    child = await env.lean("local")
    # Paths signed with a throwaway secret: the lean master answers without looking.
    paths = is_meeting_running_paths(SimServer("none", "http://127.0.0.1/bigbluebutton/", "unused"))
    return Target(child.ready_line.split()[-1], paths, pids={"lean": child.pid})


async def setup_lean_forward(env: Env) -> Target:
    sim = await env.sim(1)
    server = sim.servers[0]
    child = await env.lean("forward", upstream=server.origin)
    return Target(child.ready_line.split()[-1], is_meeting_running_paths(server),
                  pids={"lean": child.pid, "sim": sim.child.pid})


def registry(bbb_lb: list[str] | None = None) -> list[Case]:
    """All cases in run order; baselines first so every later ratio has its denominator."""
    cases = [
        Case("sim-direct", "isMeetingRunning straight to one simulator server", setup=setup_sim_direct),
        Case("lean-local", "lean mitmproxy master answering locally (fixed XML)", setup=setup_lean_local),
        Case("lean-forward", "lean mitmproxy master reverse-proxying to the simulator",
             setup=setup_lean_forward, baseline="sim-direct"),
    ]
    cases += bbb_lb_cases(bbb_lb)
    return cases


# --------------------------------------------------------------------------------------------
# bbb-lb
# --------------------------------------------------------------------------------------------


@dataclass
class BbbLb:
    """A running ``bbb-lb run --config`` against simulator servers."""

    url: str
    secret: str
    config_path: Path
    child: Child

    def path(self, call: str, params: Iterable[tuple[str, str]] | str = ()) -> str:
        return signed_path(call, params, self.secret)


def bbb_lb_command() -> list[str] | None:
    """How to start bbb-lb here, or None when it is not installed/runnable yet."""
    candidates = [Path(sys.executable).with_name("bbb-lb")]
    if found := shutil.which("bbb-lb"):
        candidates.append(Path(found))
    for exe in candidates:
        if not exe.exists():
            continue
        try:
            done = subprocess.run([str(exe), "run", "--help"], capture_output=True, timeout=30, cwd=REPO)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and b"--config" in done.stdout + done.stderr:
            return [str(exe)]
    return None


def bbb_lb_config(port: int, servers: Sequence[SimServer], store: Path,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML bbb-lb is started with; ``extra`` is merged one level deep (e.g. monitor settings)."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "public_url": f"http://127.0.0.1:{port}",
        "secret": LB_SECRET,
        "servers": [{"name": s.name, "url": s.url, "secret": s.secret} for s in servers],
        "store": {"path": str(store)},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


async def start_bbb_lb(env: Env, sim: Sim, *, servers: Sequence[SimServer] | None = None,
                       extra: dict[str, Any] | None = None, store: Path | None = None,
                       timeout: float = READY_TIMEOUT) -> BbbLb:
    """Generate a config into a temp dir, start bbb-lb, wait for its API root to answer 200.

    ``store`` lets a case pre-seed the store file (see seed_events); default: a fresh one.
    """
    command = env.args.bbb_lb_command
    if not command:
        raise RuntimeError("bbb-lb is not runnable (no 'bbb-lb run --config' in this venv)")
    workdir = env.new_dir("bbb-lb")
    port = free_port()
    config = bbb_lb_config(port, servers or sim.servers, store or workdir / "store.json", extra)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    child = await env.spawn("bbb-lb", [*command, "run", "--config", str(path)],
                            ready_url=f"{url}/bigbluebutton/api", timeout=timeout)
    return BbbLb(url=url, secret=LB_SECRET, config_path=path, child=child)


def lb_pids(lb: BbbLb, sim: Sim) -> dict[str, int]:
    return {"bbb-lb": lb.child.pid, "sim": sim.child.pid}


def create_params(meeting_id: str) -> list[tuple[str, str]]:
    return [("meetingID", meeting_id), ("name", f"Bench {meeting_id}"), ("attendeePW", "ap"), ("moderatorPW", "mp")]


async def create_meetings(lb: BbbLb, ids: Sequence[str], concurrency: int = 32, ready_within: float = 30.0) -> None:
    """Create ``ids`` through the balancer (so its state and the servers' agree), 32 at a time.

    The first create is retried until the balancer's monitor has found a server up.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def create(meeting_id: str) -> bool:
            async with session.get(lb.url + lb.path("create", create_params(meeting_id))) as resp:
                return resp.status == 200 and "<returncode>SUCCESS" in await resp.text()

        if not ids:
            return
        deadline = time.monotonic() + ready_within
        while not await create(ids[0]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bbb-lb refused create for {ready_within:.0f} s:\n{lb.child.tail()}")
            await asyncio.sleep(0.2)
        failures = 0
        queue = iter(ids[1:])

        async def worker() -> None:
            nonlocal failures
            for meeting_id in queue:
                if not await create(meeting_id):
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if failures > len(ids) // 100:
            raise RuntimeError(f"{failures} of {len(ids)} seeding creates failed:\n{lb.child.tail()}")


async def lb_with_meetings(env: Env, servers: int, meetings: int, **lb_kwargs: Any) -> tuple[Sim, BbbLb, list[str]]:
    """A fresh simulator cluster, a fresh bbb-lb in front of it, and ``meetings`` created through it."""
    sim = await env.sim(servers, fresh=True, timeout=max(READY_TIMEOUT, servers / 5))
    lb = await start_bbb_lb(env, sim, **lb_kwargs)
    ids = [f"bench-{i}" for i in range(meetings)]
    started = time.monotonic()
    await create_meetings(lb, ids)
    if meetings >= 1000:
        print(f"  seeded {meetings} meetings on {servers} servers in {time.monotonic() - started:.1f} s", flush=True)
    return sim, lb, ids


def new_meeting_paths(lb: BbbLb, duration: float, prefix: str = "new") -> list[str]:
    """Enough never-used meeting IDs for every run of a case at up to 5,000 creates/s."""
    count = min(MAX_PATHS, int(5000 * duration * len(CONCURRENCY)))
    return [lb.path("create", create_params(f"{prefix}-{i}")) for i in range(count)]


def join_paths(lb: BbbLb, ids: Sequence[str]) -> list[str]:
    return [lb.path("join", [("meetingID", m), ("fullName", f"User {n}"), ("role", "VIEWER")])
            for n, m in enumerate(ids)]


def per_meeting_paths(lb: BbbLb, call: str, ids: Sequence[str]) -> list[str]:
    return [lb.path(call, [("meetingID", m)]) for m in ids]


async def seed_events(store: Path, count: int, days: int = 100) -> None:
    """Write ``count`` ended meetings with one join each into a store, with the project's own code.

    Creation times are spread over the last ``days`` days, as getMeetingEvents filters by day.
    """
    from lb_core.event_log import EventLog
    from lb_core.store_tinydb import TinyDbStore

    db = TinyDbStore(str(store), event_flush_interval_s=3600)
    await db.open()
    try:
        log = EventLog(db)
        now = int(time.time() * 1000)
        span = days * 86_400_000
        for i in range(count):
            at = now - span + span * i // count
            event_id = log.created(integration="default", meeting_id=f"past-{i}", name=f"Past {i}", at=at,
                                   server_name="bbb1", server_url="http://127.0.0.1:1",
                                   query=create_params(f"past-{i}"))
            log.joined(event_id, f"User {i}", "attendee", at + 1000)
            log.ended(event_id, at + 3_600_000)
        await log.close()
    finally:
        await db.close()


def event_query_paths(lb: BbbLb, days: int = 100) -> list[str]:
    """What a reporting client asks: the newest page, a bigger page, single recent days, a week."""
    today = time.gmtime()
    day = [time.strftime("%Y-%m-%d", time.gmtime(time.mktime(today) - d * 86_400)) for d in range(days)]
    queries: list[list[tuple[str, str]]] = [[], [("limit", "100")]]
    queries += [[("createdAt", day[d]), ("createdAt", day[d])] for d in range(1, 8)]
    queries += [[("createdAt", day[7]), ("createdAt", day[0]), ("limit", "100")]]
    return [lb.path("getMeetingEvents", q) for q in queries]


def seed_recordings(store: Path, count: int, per_meeting: int = 5) -> None:
    """Write ``count`` indexed recordings (``per_meeting`` per meetingID) straight into a TinyDB store file."""
    now = int(time.time() * 1000)
    table = {}
    for i in range(count):
        record_id = f"{i:040x}-{now - i}"
        table[str(i + 1)] = {
            "_key": record_id, "record_id": record_id, "meeting_id": f"room-{i // per_meeting}",
            "internal_meeting_id": record_id, "integration": "default", "name": f"Room {i // per_meeting}",
            "state": "published", "published": True, "start_time": now - i * 60_000, "end_time": now - i * 60_000 + 1,
            "participants": 3, "metadata": {"mconflb-institution": "default", "bbb-origin": "Bench"},
            "playback": [{"type": "presentation", "url": f"http://bbb1/playback/presentation/2.3/{record_id}",
                          "processing_time": 1, "length": 1, "size": 0, "preview": []}],
            "server": "bbb1", "source": "sync", "stored_formats": [], "pending": {}, "deleted_at": None,
        }
    store.write_text(json.dumps({"recordings": table}))


def recording_archive(folder: Path, record_id: str, size: int) -> Path:
    """A tar of one recording whose video is ``size`` incompressible bytes (written once, reused)."""
    import tarfile

    source = folder / "published" / "presentation" / record_id
    (source / "video").mkdir(parents=True)
    (source / "metadata.xml").write_text(
        f"<recording><id>{record_id}</id><state>published</state><published>true</published>"
        f"<start_time>1</start_time><end_time>2</end_time><meeting id='{record_id}' externalId='bench' name='b'/>"
        f"<meta><mconflb-institution>default</mconflb-institution></meta><playback><format>presentation</format>"
        f"<link>http://x/{record_id}</link></playback></recording>")
    with open(source / "video" / "webcams.webm", "wb") as out:
        for _ in range(size // (1 << 20)):
            out.write(os.urandom(1 << 20))
    archive = folder / f"{record_id}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname=f"presentation/{record_id}")
    return archive


async def upload_forever(url: str, archive: Path, server: SimServer, stop_after: float) -> None:
    """POST the archive again and again (each import replaces the last) for ``stop_after`` seconds.

    The uploader stands for a BBB server on another host: it is curl at nice 19, so its own CPU (which
    would be the BBB server's) takes as little as possible from the LB on this machine.
    """
    import warnings

    import jwt

    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)  # the simulator's short secrets
    deadline = time.monotonic() + stop_after
    uploads = 0
    while time.monotonic() < deadline:
        token = jwt.encode({"sub": server.name, "exp": int(time.time()) + 300}, server.secret, algorithm="HS256")
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "nice", "-n", "19", "curl", "-sS", "-X", "POST", "-T", str(archive), "-w", "\n%{http_code}",
            "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/x-tar", "-H", "Expect:",
            url + "/bigbluebutton/lb/recordings", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        answer, _, status = output.decode(errors="replace").rpartition("\n")
        uploads += 1
        took = time.monotonic() - started
        if status != "200" or uploads == 1:
            print(f"  upload {uploads}: HTTP {status} in {took:.2f} s {answer[:120]}", flush=True)
        else:
            print(f"  upload {uploads}: HTTP 200 in {took:.2f} s", flush=True)


async def import_forever(admin_url: str, token: str, archive: Path, stop_after: float) -> None:
    """Import the archive from disk again and again through the admin API's import jobs (no upload): what
    the import worker alone costs the API process, apart from reading an upload's body."""
    deadline = time.monotonic() + stop_after
    headers = {"Authorization": f"Bearer {token}"}
    imports = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while time.monotonic() < deadline:
            started = time.monotonic()
            async with session.post(f"{admin_url}/api/recordings/imports", json={"path": str(archive)},
                                    headers=headers) as resp:
                job = await resp.json()
            delay = 0.05
            while job.get("state") == "running":  # asked after as `bbb-lb recordings import` does
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                async with session.get(f"{admin_url}/api/recordings/imports/{job['job']}", headers=headers) as resp:
                    job = await resp.json()
            imports += 1
            result = (job.get("result") or {}).get("result", job)
            print(f"  import {imports}: {result} in {time.monotonic() - started:.2f} s", flush=True)


def bbb_lb_cases(command: list[str] | None) -> list[Case]:
    """bbb-lb cases; empty when ``bbb-lb run --config`` does not work in this venv."""
    if not command:
        return []

    async def join(env: Env) -> Target:
        sim, lb, ids = await lb_with_meetings(env, 3, 1000)
        return Target(lb.url, join_paths(lb, ids), pids=lb_pids(lb, sim))

    def routed(call: str) -> Callable[[Env], Awaitable[Target]]:
        async def setup(env: Env) -> Target:
            sim, lb, ids = await lb_with_meetings(env, 3, 1000)
            return Target(lb.url, per_meeting_paths(lb, call, ids), pids=lb_pids(lb, sim))
        return setup

    async def create(env: Env) -> Target:
        sim, lb, _ = await lb_with_meetings(env, 3, 1000)
        return Target(lb.url, new_meeting_paths(lb, env.args.duration), pids=lb_pids(lb, sim),
                      note="new meetings; state grows during the run")

    async def join_without_events(env: Env) -> Target:
        sim, lb, ids = await lb_with_meetings(env, 3, 1000, extra={"events": {"enabled": False}})
        return Target(lb.url, join_paths(lb, ids), pids=lb_pids(lb, sim), note="events.enabled: false")

    async def server_get_meetings(env: Env) -> Target:
        """One of 50 servers answering getMeetings itself: what bbb-lb's merge is judged against."""
        sim, lb, _ = await lb_with_meetings(env, 50, 50)
        server = sim.servers[0]
        return Target(server.origin, [signed_path("getMeetings", [], server.secret)], pids={"sim": sim.child.pid})

    def get_meetings(servers: int) -> Callable[[Env], Awaitable[Target]]:
        async def setup(env: Env) -> Target:
            sim, lb, _ = await lb_with_meetings(env, servers, 50)
            return Target(lb.url, [lb.path("getMeetings")], pids=lb_pids(lb, sim))
        return setup

    def meeting_events(scan: bool) -> Callable[[Env], Awaitable[Target]]:
        async def setup(env: Env) -> Target:
            sim = await env.sim(3, fresh=True)
            store = env.new_dir("events-store") / "store.json"
            started = time.monotonic()
            await seed_events(store, 100_000)
            print(f"  seeded 100,000 meeting events in {time.monotonic() - started:.1f} s", flush=True)
            lb = await start_bbb_lb(env, sim, store=store, timeout=180)
            paths = [lb.path("getMeetingEvents", [("users", "1000")])] if scan else event_query_paths(lb)
            return Target(lb.url, paths, pids=lb_pids(lb, sim))
        return setup

    async def recordings_index(env: Env) -> Target:
        sim = await env.sim(3, fresh=True)
        store = env.new_dir("recordings-store") / "store.json"
        started = time.monotonic()
        seed_recordings(store, 100_000)
        print(f"  seeded 100,000 indexed recordings in {time.monotonic() - started:.1f} s", flush=True)
        lb = await start_bbb_lb(env, sim, store=store, timeout=180)
        paths = [lb.path("getRecordings", [("meetingID", f"room-{i}")]) for i in range(0, 20_000, 7)]
        return Target(lb.url, paths, pids=lb_pids(lb, sim), note="meetingID filter, 5 of 100k recordings each")

    def join_with_recordings(uploads: bool) -> Callable[[Env], Awaitable[Target]]:
        """The same LB (recording server on, default upload_rate_limit) with or without uploads beside wrk:
        the two cases differ only in the archives POSTed, so their p99 ratio is the cost of an import."""
        async def setup(env: Env) -> Target:
            folder = env.new_dir("recording-upload")
            archive = recording_archive(folder, "f" * 40 + "-1700000000000", 100 * 1024 * 1024)
            sim, lb, ids = await lb_with_meetings(env, 3, 1000,
                                                  extra={"recordings": {"storage": str(folder / "storage")}})
            if not uploads:
                return Target(lb.url, join_paths(lb, ids), pids=lb_pids(lb, sim),
                              note="recordings.storage set, nothing uploaded: the baseline of lb-join-during-import")
            task = asyncio.get_running_loop().create_task(
                upload_forever(lb.url, archive, sim.servers[0], env.args.duration * len(CONCURRENCY) + 2))
            env.background.append(task)
            return Target(lb.url, join_paths(lb, ids), pids=lb_pids(lb, sim),
                          note="100 MB archives POSTed back to back over loopback (as fast as the LB reads them) "
                               "and imported; compare p99 with lb-join-recordings")
        return setup

    async def join_during_spool_import(env: Env) -> Target:
        """As lb-join-during-import, but the archive is imported from disk (``bbb-lb recordings import``):
        the import worker's share of the join p99 rise, without the upload's body reading."""
        folder = env.new_dir("recording-spool-import")
        archive = recording_archive(folder, "e" * 40 + "-1700000000000", 100 * 1024 * 1024)
        admin_port, token = free_port(), "bench-admin-token-0123456789"
        sim, lb, ids = await lb_with_meetings(env, 3, 1000, extra={
            "recordings": {"storage": str(folder / "storage")},
            "admin": {"host": "127.0.0.1", "port": admin_port, "token": token}})
        task = asyncio.get_running_loop().create_task(
            import_forever(f"http://127.0.0.1:{admin_port}", token, archive,
                           env.args.duration * len(CONCURRENCY) + 2))
        env.background.append(task)
        return Target(lb.url, join_paths(lb, ids), pids=lb_pids(lb, sim),
                      note="100 MB archives imported from disk back to back; compare p99 with lb-join-recordings")

    def growth(call: str, meetings: int, servers: int) -> Callable[[Env], Awaitable[Target]]:
        async def setup(env: Env) -> Target:
            sim, lb, ids = await lb_with_meetings(env, servers, meetings)
            paths = join_paths(lb, ids) if call == "join" else new_meeting_paths(lb, env.args.duration)
            return Target(lb.url, paths, pids=lb_pids(lb, sim),
                          note="new meetings; state grows during the run" if call == "create" else "")
        return setup

    def on_redis(call: str, workers: int) -> Callable[[Env], Awaitable[Target]]:
        """The TinyDB cases' work on the Redis store, served by ``workers`` processes on one port."""
        async def setup(env: Env) -> Target:
            url, redis_pid = await env.redis()
            prefix = f"bench-{call}-{workers}-{os.getpid()}-{time.monotonic_ns()}"
            sim, lb, ids = await lb_with_meetings(env, 3, 1000, extra={
                "store": {"backend": "redis", "url": url, "prefix": prefix}, "workers": workers})
            paths = (join_paths(lb, ids) if call == "join" else new_meeting_paths(lb, env.args.duration)
                     if call == "create" else per_meeting_paths(lb, call, ids))
            note = f"Redis store, {workers} worker{'s' if workers > 1 else ''}; all share the same 2 cores"
            pids = {**lb_pids(lb, sim), "redis": redis_pid}
            if workers > 1:  # the supervisor idles: report each worker (its children)
                del pids["bbb-lb"]
                children = Path(f"/proc/{lb.child.pid}/task/{lb.child.pid}/children").read_text().split()
                pids.update({f"worker{i}": int(pid) for i, pid in enumerate(children)})
            return Target(lb.url, paths, pids=pids, note=note)
        return setup

    cases = [
        Case("lb-join", "join redirect (answered locally), 1k meetings on 3 servers", setup=join,
             baseline="lean-local"),
        Case("lb-isMeetingRunning", "isMeetingRunning routed to the meeting's server, 1k meetings",
             setup=routed("isMeetingRunning"), baseline="lean-forward"),
        Case("lb-getMeetingInfo", "getMeetingInfo routed to the meeting's server, 1k meetings",
             setup=routed("getMeetingInfo"), baseline="lean-forward"),
        Case("lb-create", "create of new meetings (balancer pick + store write), 3 servers",
             setup=create, baseline="lean-forward"),
        Case("lb-join-no-events", "join redirect with meeting events switched off (their cost)",
             setup=join_without_events, baseline="lean-local"),
        Case("sim-getMeetings-50", "one of 50 simulated servers answering getMeetings itself",
             setup=server_get_meetings, baseline="sim-direct"),
        Case("lb-getMeetings-3", "getMeetings fan-out over 3 servers, 50 meetings in all",
             setup=get_meetings(3), baseline="lean-forward"),
        Case("lb-getMeetings-50", "getMeetings fan-out over 50 servers, 50 meetings in all",
             setup=get_meetings(50), baseline="lean-forward"),
        Case("lb-getMeetingEvents-100k", "getMeetingEvents pages and day filters over 100k events",
             setup=meeting_events(scan=False), baseline="lean-local"),
        Case("lb-getRecordings-100k", "getRecordings with a meetingID filter over 100k indexed recordings",
             setup=recordings_index, baseline="lean-local"),
        Case("lb-join-recordings", "join redirect on a recording server, no upload (the next case's baseline)",
             setup=join_with_recordings(uploads=False), baseline="lb-join"),
        Case("lb-join-during-import", "join redirect while 100 MB recording archives are uploaded and imported",
             setup=join_with_recordings(uploads=True), baseline="lb-join-recordings"),
        Case("lb-join-during-spool-import", "join redirect while 100 MB archives are imported from disk (no upload)",
             setup=join_during_spool_import, baseline="lb-join-recordings"),
        Case("lb-getMeetingEvents-100k-scan", "getMeetingEvents with a filter nothing matches (full scan)",
             setup=meeting_events(scan=True), baseline="lean-local"),
    ]
    # The Redis store (issue 12): one worker against TinyDB, two workers against one.
    for call, tinydb in (("join", "lb-join"), ("isMeetingRunning", "lb-isMeetingRunning"), ("create", "lb-create")):
        cases.append(Case(f"lb-redis-{call}", f"{call} on the Redis store, 1 worker, 1k meetings",
                          setup=on_redis(call, 1), baseline=tinydb))
    for call in ("join", "isMeetingRunning", "create"):
        cases.append(Case(f"lb-redis2-{call}", f"{call} on the Redis store, 2 workers (SO_REUSEPORT), 1k meetings",
                          setup=on_redis(call, 2), baseline=f"lb-redis-{call}"))
    # Growth: does per-request cost depend on state? Meetings grow at 10 servers, servers at 1k meetings.
    for meetings, servers in ((1000, 10), (10_000, 10), (1000, 100), (1000, 500)):
        tag = f"m{meetings // 1000}k-s{servers}"
        cases.append(Case(f"lb-growth-join-{tag}", f"join with {meetings:,} meetings on {servers} servers",
                          setup=growth("join", meetings, servers), baseline="lean-local"))
        cases.append(Case(f"lb-growth-create-{tag}", f"create new meetings with {meetings:,} on {servers} servers",
                          setup=growth("create", meetings, servers), baseline="lean-forward"))
    return cases


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def select(cases: list[Case], only: str | None, with_baselines: bool) -> list[Case]:
    """The cases --only names, plus the baselines their ratio columns need (kept in registry order)."""
    if not only:
        return cases
    names = {n.strip() for n in only.split(",") if n.strip()}
    by_name = {c.name: c for c in cases}
    unknown = sorted(names - by_name.keys())
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(unknown)}; see --list")
    if with_baselines:
        names |= set(RATIO_COLUMNS) | {str(by_name[n].baseline) for n in names if by_name[n].baseline}
    return [c for c in cases if c.name in names]


async def run_case(env: Env, case: Case, duration: float, results: list[Result]) -> None:
    """Set the case up, probe it once, load it at each concurrency; append results as they come."""
    try:
        target = case.setup(env) if case.setup else None
        if inspect.isawaitable(target):
            target = await target
        url = target.url if target else case.url
        paths = target.paths if target else case.paths
        if url is None or paths is None:
            raise ValueError("case has no url/paths and its setup returned no Target")
        items = materialise(paths)
        workdir = env.new_dir(case.name)
        paths_file = workdir / "paths.txt"
        paths_file.write_text("\n".join(items) + "\n")
        script = workdir / "cycle.lua"
        script.write_text(LUA_TEMPLATE % {"paths_file": str(paths_file)})
        note = target.note if target else ""
        if problem := await probe(url, items[0]):
            print(f"  ! {case.name}: {problem}", flush=True)
            note = (note + "; " if note else "") + problem
        pids = target.pids if target else {}
        share = len(items) // len(case.concurrency)
        for run, (threads, conns) in enumerate(case.concurrency):
            result = Result(case.name, threads, conns, baseline=case.baseline, note=note)
            try:
                output, result.cpu_pct = await run_wrk(
                    url, script, threads, conns, duration, workdir / f"wrk-c{conns}.log", pids,
                    offset=run * share, stride=share // threads,
                )
                parse_wrk(output, result)
            except RuntimeError as exc:
                result.error = str(exc)
            results.append(result)
            print(f"  {case.name:<32} c={conns:<3} {result.rps:>10,.0f} req/s  p50 {fmt(result.p50_ms)} ms"
                  f"  p99 {fmt(result.p99_ms)} ms  errors {result.errors}"
                  + (f"  ERROR {result.error}" if result.error else ""), flush=True)
    except Exception as exc:  # one broken case must not lose the others' figures
        if isinstance(exc, RuntimeError):  # our own failure reports (child exited, seeding failed)
            print(f"  ! {case.name}: {exc}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
        results.append(Result(case.name, 0, 0, baseline=case.baseline, error=f"{type(exc).__name__}: {exc}"))
    finally:
        env.end_case()


def add_ratios(results: list[Result]) -> None:
    rps = {(r.case, r.conns): r.rps for r in results if r.rps and not r.error}

    def ratio(r: Result, base: str | None) -> float | None:
        denominator = rps.get((base, r.conns)) if base else None
        return round(r.rps / denominator, 3) if denominator and r.rps else None

    for r in results:
        r.ratio_lean_local = ratio(r, "lean-local")
        r.ratio_sim_direct = ratio(r, "sim-direct")
        r.ratio_baseline = ratio(r, r.baseline)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(results: list[Result]) -> str:
    header = ["case", "conc", "req/s", "p50 ms", "p99 ms", "errors", "x lean-local", "x sim-direct", "x base",
              "cpu % of a core"]
    rows = [header]
    for r in results:
        if r.error and not r.rps:
            first_line = (r.error.strip().splitlines() or [""])[0]
            rows.append([r.case, str(r.conns or "-"), "ERROR", "-", "-", "-", "-", "-", "-", first_line[:70]])
            continue
        base = f"{fmt(r.ratio_baseline, 3)} ({r.baseline})" if r.baseline else "-"
        cpu = ", ".join(f"{name} {pct:.0f}" for name, pct in r.cpu_pct.items()) or "-"
        rows.append([
            r.case, str(r.conns), fmt(r.rps, 0), fmt(r.p50_ms, 3), fmt(r.p99_ms, 3), str(r.errors),
            fmt(r.ratio_lean_local, 3), fmt(r.ratio_sim_direct, 3), base, cpu,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = {0, 8, 9}
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i in left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    from mitmproxy import version as mitmproxy_version

    return {
        "started": args.started,
        "duration_s": args.duration,
        "concurrency": [{"threads": t, "connections": c} for t, c in CONCURRENCY],
        "git": tool_version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy_version.VERSION,
        "wrk": tool_version(["wrk", "--version"]),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "bbb_lb": bool(args.bbb_lb_command),
    }


async def run(args: argparse.Namespace, cases: list[Case], results: list[Result]) -> None:
    """Run ``cases`` in order, appending to ``results`` so an interrupted run keeps what it measured."""
    tmp = Path(tempfile.mkdtemp(prefix="bbb-bench-"))
    env = Env(args, tmp)
    try:
        for case in cases:
            print(f"== {case.name}: {case.about}", flush=True)
            await run_case(env, case, args.duration, results)
    finally:
        env.end_run()
        if args.keep:
            print(f"child logs, configs and wrk scripts kept in {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (default 8)")
    parser.add_argument("--quick", action="store_true", help="3 s runs, for smoke tests")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these cases (plus the baselines they need)")
    parser.add_argument("--no-baselines", action="store_true", help="with --only: do not add baselines")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--output", type=Path, help="JSON file (default bench-results/bench-<timestamp>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (child logs, configs, wrk scripts)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    if args.duration <= 0 or args.duration > 600:
        parser.error("--duration must be in (0, 600] seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = time.strftime("%Y%m%d-%H%M%S")
    args.bbb_lb_command = bbb_lb_command()
    cases = registry(args.bbb_lb_command)
    if args.list:
        for case in cases:
            print(f"{case.name:<32} {case.about}")
        if not args.bbb_lb_command:
            print("(bbb-lb cases appear once `bbb-lb run --config FILE` works in this venv)")
        return 0
    if not shutil.which("wrk"):
        print("wrk is not on PATH (scripts/bench installs it)", file=sys.stderr)
        return 2
    selected = select(cases, args.only, not args.no_baselines)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    # Ctrl-C must raise even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    results: list[Result] = []
    status = 0
    try:
        asyncio.run(run(args, selected, results))
    except KeyboardInterrupt:
        status = 130
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        kill_all()
    if status:
        print(f"\ninterrupted (exit {status}); partial results follow", file=sys.stderr)
    add_ratios(results)
    print()
    print(table(results))
    output = args.output or RESULTS_DIR / f"bench-{args.started}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {**metadata(args), "interrupted": bool(status)}
    output.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    print(f"\nresults: {output}")
    return status or (1 if any(r.error for r in results) else 0)


if __name__ == "__main__":
    sys.exit(main())
