"""Soak test (issue 10): minutes of mixed traffic with hostile requests and a flapping backend.

Starts simulated BBB servers and a real ``bbb-lb run`` (scripts/bench.py helpers), then sends calls at a
fixed rate from several integrations: meeting lifecycles (create with an end callback, join,
isMeetingRunning, getMeetingInfo, getMeetings, getRecordings, end), mixed with hostile requests
(unsigned, bad checksum, an 8 MB unsigned POST, garbage bytes, a raw non-UTF-8 query, slow clients that
never finish their request head, callbacks aimed at the cloud metadata address), while one backend
cycles through refusing, 503 and hanging. Every outcome is classified as expected or unexpected; the
run prints them by kind, p50/p99 latency of the valid calls, and the LB's RSS and open file descriptors
over time (from /proc/PID). Exit status 1 when anything unexpected happened.

    scripts/soak                       # 10 minutes at 50 calls/s
    scripts/soak --minutes 2 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: children, simulator and bbb-lb start-up)

from lb_core import checksum  # noqa: E402

INTEGRATIONS = [("moodle", "moodle-soak-secret"), ("greenlight", "greenlight-soak-secret"),
                ("canvas", "canvas-soak-secret")]
LIVE_MEETINGS = 20  # per integration, kept alive by creating when fewer
HOSTILE_SHARE = 0.12
FLAP_SCHEDULE = (("ok", 20.0), ("refuse", 10.0), ("ok", 20.0), ("503", 10.0), ("ok", 20.0), ("hang", 8.0))
CLIENT_TIMEOUT_S = 15.0
SLOW_CLIENT_HOLD_S = 20.0  # a slow client the LB has not cut by then is an unexpected error
OVERSIZED_BYTES = 8 * 1024 * 1024
# Answers a valid call may get while a backend flaps; anything else FAILED is unexpected.
DEGRADED_KEYS = {"serverUnavailable", "serverTimeout", "notFound"}


@dataclass
class Meeting:
    integration: str
    secret: str
    meeting_id: str
    created_at: float


@dataclass
class Stats:
    expected: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    success_ms: list[float] = field(default_factory=list)  # SUCCESS or redirect only
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (elapsed s, RSS kB, fds)
    callbacks_received: int = 0
    in_flight: int = 0
    sent: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def ok(self, kind: str) -> None:
        self.expected[kind] += 1

    def bad(self, kind: str, example: str = "") -> None:
        self.unexpected[kind] += 1
        self.examples.setdefault(kind, example[:300])


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def proc_figures(pid: int) -> tuple[int, int]:
    """(RSS in kB, open file descriptors) of ``pid``, from /proc."""
    rss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return rss, fds


def field_of(body: str, tag: str) -> str:
    start = body.find(f"<{tag}>")
    end = body.find(f"</{tag}>")
    return body[start + len(tag) + 2 : end] if start >= 0 and end > start else ""


class Soak:
    def __init__(self, args: argparse.Namespace, lb: bench.BbbLb, sim: bench.Sim, receiver_url: str) -> None:
        self.args = args
        self.lb = lb
        self.sim = sim
        self.host, self.port = "127.0.0.1", int(lb.url.rsplit(":", 1)[1])
        self.receiver_url = receiver_url
        self.stats = Stats()
        self.live: dict[str, list[Meeting]] = {name: [] for name, _ in INTEGRATIONS}
        self.last_flap = 0.0  # monotonic time a backend last stopped answering normally
        self.counter = 0
        self.session: aiohttp.ClientSession | None = None
        self.rng = random.Random(10)

    # --- signed calls ------------------------------------------------------------------------------

    def url(self, call: str, params: list[tuple[str, str]], secret: str) -> str:
        return f"{self.lb.url}/bigbluebutton/api/{call}?{checksum.sign(call, urlencode(params), secret)}"

    async def get(self, url: str, *, method: str = "GET", data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, str, float]:
        assert self.session is not None
        started = time.perf_counter()
        # encoded=True: the signed query must go out byte for byte (yarl would re-encode %3A and co).
        async with self.session.request(method, URL(url, encoded=True), data=data, headers=headers,
                                        allow_redirects=False) as response:
            body = (await response.read()).decode("utf-8", "replace")
            return response.status, body, (time.perf_counter() - started) * 1000

    async def valid(self) -> None:
        name, secret = self.rng.choice(INTEGRATIONS)
        live = self.live[name]
        if len(live) < LIVE_MEETINGS:
            self.counter += 1
            meeting = Meeting(name, secret, f"soak-{name}-{self.counter}", time.monotonic())
            params = [("meetingID", meeting.meeting_id), ("name", "Soak room"), ("attendeePW", "ap"),
                      ("moderatorPW", "mp"), ("meta_endCallbackUrl", f"{self.receiver_url}/ended/{name}")]
            await self.expect_success("create", self.url("create", params, secret), meeting,
                                      on_success=lambda: live.append(meeting))
            return
        meeting = self.rng.choice(live)
        roll = self.rng.random()
        mid = [("meetingID", meeting.meeting_id)]
        if roll < 0.30:
            url = self.url("join", [*mid, ("fullName", "Soak user"), ("role", "VIEWER")], secret)
            await self.expect_success("join", url, meeting, redirect=True)
        elif roll < 0.50:
            await self.expect_success("isMeetingRunning", self.url("isMeetingRunning", mid, secret), meeting)
        elif roll < 0.70:
            await self.expect_success("getMeetingInfo", self.url("getMeetingInfo", mid, secret), meeting)
        elif roll < 0.80:
            await self.expect_success("getMeetings", self.url("getMeetings", [], secret), None)
        elif roll < 0.88:
            await self.expect_success("getRecordings", self.url("getRecordings", mid, secret), None)
        else:
            live.remove(meeting)
            await self.expect_success("end", self.url("end", [*mid, ("password", "mp")], secret), meeting)

    async def expect_success(self, call: str, url: str, meeting: Meeting | None, *, redirect: bool = False,
                             on_success: Any = None) -> None:
        try:
            status, body, ms = await self.get(url)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats.bad(f"{call}: no answer ({type(exc).__name__})", str(exc))
            return
        self.stats.latencies_ms.append(ms)
        if redirect and status == 302:
            self.stats.ok(f"{call} redirected")
            self.stats.success_ms.append(ms)
            return
        code = field_of(body, "returncode")
        if status == 200 and code == "SUCCESS":
            self.stats.ok(f"{call} SUCCESS")
            self.stats.success_ms.append(ms)
            if on_success is not None:
                on_success()
            return
        key = field_of(body, "messageKey")
        flapped = self.last_flap and (meeting is None or self.last_flap >= meeting.created_at - 30)
        # A backend's own error page (503 from the flapping server) relayed as FAILED internalError.
        relayed = key == "internalError" and "server answered HTTP 5" in body
        if code == "FAILED" and (key in DEGRADED_KEYS or relayed) and flapped:
            self.stats.ok(f"{call} FAILED {key} (backend flapping)")
            if meeting is not None and key == "notFound":
                with contextlib.suppress(ValueError):
                    self.live[meeting.integration].remove(meeting)
            return
        self.stats.bad(f"{call}: HTTP {status} {code or 'not XML'} {key}".rstrip(), body)

    # --- hostile requests --------------------------------------------------------------------------

    async def hostile(self) -> None:
        kind = self.rng.choice(["unsigned", "bad checksum", "oversized POST", "garbage bytes", "non-UTF-8 query",
                                "slow client", "callback to metadata address"])
        name, secret = self.rng.choice(INTEGRATIONS)
        try:
            if kind == "unsigned":
                await self.expect_failed(kind, f"{self.lb.url}/bigbluebutton/api/getMeetings", {"checksumError"})
            elif kind == "bad checksum":
                await self.expect_failed(kind, f"{self.lb.url}/bigbluebutton/api/getMeetingInfo?meetingID=x&checksum="
                                         + "0" * 64, {"checksumError"})
            elif kind == "oversized POST":
                await self.expect_failed(kind, f"{self.lb.url}/bigbluebutton/api/create?meetingID=big",
                                         {"checksumError", "requestTooLarge"}, method="POST",
                                         data=b"a=" + b"x" * OVERSIZED_BYTES,
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            elif kind == "non-UTF-8 query":
                await self.raw(kind, b"GET /bigbluebutton/api/getMeetingInfo?meetingID=\xff\xfe&checksum=\xc3 "
                                     b"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", want_failed_xml=True)
            elif kind == "garbage bytes":
                junk = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 4096)))
                await self.raw(kind, junk + b"\r\n\r\n", want_failed_xml=False)
            elif kind == "slow client":
                await self.slow_client()
            else:
                params = [("meetingID", "meta"), ("name", "x"), ("meta_endCallbackUrl", "http://169.254.169.254/")]
                await self.expect_failed(kind, self.url("create", params, secret), {"invalidParameters"})
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats.bad(f"hostile {kind}: {type(exc).__name__}", str(exc))

    async def expect_failed(self, kind: str, url: str, keys: set[str], **request: Any) -> None:
        try:
            status, body, _ = await self.get(url, **request)
        except aiohttp.ServerDisconnectedError:
            if kind == "oversized POST":  # closed instead of read: an answer is still expected
                self.stats.bad(f"hostile {kind}: closed without an answer")
                return
            raise
        key = field_of(body, "messageKey")
        if field_of(body, "returncode") == "FAILED" and key in keys:
            self.stats.ok(f"hostile {kind}: FAILED {key}")
        else:
            self.stats.bad(f"hostile {kind}: HTTP {status} {key or 'no messageKey'}", body)

    async def raw(self, kind: str, payload: bytes, *, want_failed_xml: bool) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        try:
            writer.write(payload)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), CLIENT_TIMEOUT_S)
            while answer and len(answer) < 65536 and (more := await asyncio.wait_for(reader.read(65536), 5)):
                answer += more  # the whole answer: the LB closes after it
        except (ConnectionError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                self.stats.bad(f"hostile {kind}: no answer within {CLIENT_TIMEOUT_S:.0f} s")
            else:
                self.stats.ok(f"hostile {kind}: connection reset")
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        head = answer.split(b"\r\n", 1)[0].decode("latin-1")
        leaks = b"mitmproxy" in answer.lower()
        if leaks:
            self.stats.bad(f"hostile {kind}: answer names mitmproxy", answer.decode("latin-1"))
        elif not answer:
            self.stats.ok(f"hostile {kind}: closed")
        elif want_failed_xml and b"<returncode>FAILED</returncode>" in answer:
            self.stats.ok(f"hostile {kind}: FAILED")
        elif not want_failed_xml and head.startswith("HTTP/1.1 4"):
            self.stats.ok(f"hostile {kind}: {head[9:12]}")
        else:
            self.stats.bad(f"hostile {kind}: {head[:40] or 'odd answer'}", answer.decode("latin-1"))

    async def slow_client(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        started = time.monotonic()
        try:
            writer.write(b"GET /bigbluebutton/api/getMeetings HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            await writer.drain()
            while time.monotonic() - started < SLOW_CLIENT_HOLD_S:
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")  # a byte now and then, as a slowloris does
                    await writer.drain()
                    continue
                if not data or b"HTTP/1.1" in data:
                    self.stats.ok("hostile slow client: cut")
                    return
            self.stats.bad(f"hostile slow client: not cut within {SLOW_CLIENT_HOLD_S:.0f} s")
        except ConnectionError:
            self.stats.ok("hostile slow client: cut")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    # --- the run -----------------------------------------------------------------------------------

    async def one(self) -> None:
        self.stats.in_flight += 1
        try:
            if self.rng.random() < HOSTILE_SHARE:
                await self.hostile()
            else:
                await self.valid()
        except Exception as exc:  # a soak bug must not stop the soak; it is reported as unexpected
            self.stats.bad(f"soak error: {type(exc).__name__}", repr(exc))
        finally:
            self.stats.in_flight -= 1

    async def flap(self, name: str, stop: asyncio.Event) -> None:
        assert self.session is not None
        for mode, seconds in self.cycle():
            if stop.is_set():
                break
            async with self.session.post(f"{self.sim.control_url}/servers/{name}/fault", json={"mode": mode}) as r:
                await r.read()
            if mode != "ok":
                self.last_flap = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            if mode != "ok":
                self.last_flap = time.monotonic()
        async with self.session.post(f"{self.sim.control_url}/servers/{name}/fault", json={"mode": "ok"}) as r:
            await r.read()

    @staticmethod
    def cycle() -> Any:
        while True:
            yield from FLAP_SCHEDULE

    async def sample(self, pid: int, stop: asyncio.Event, started: float) -> None:
        while not stop.is_set():
            rss, fds = proc_figures(pid)
            self.stats.samples.append((time.monotonic() - started, rss, fds))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.sample_s)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, force_close=False)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as self.session:
            stop = asyncio.Event()
            started = time.monotonic()
            background = [asyncio.create_task(self.flap(self.sim.servers[-1].name, stop)),
                          asyncio.create_task(self.sample(self.lb.child.pid, stop, started))]
            tasks: set[asyncio.Task[None]] = set()
            interval = 1.0 / self.args.rate
            deadline = started + self.args.minutes * 60
            next_at = started
            last_report = started
            while (now := time.monotonic()) < deadline:
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                next_at += interval
                task = asyncio.create_task(self.one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.stats.sent += 1
                if now - last_report >= 30:
                    last_report = now
                    rss, fds = proc_figures(self.lb.child.pid)
                    print(f"  {now - started:5.0f} s  sent {self.stats.sent}  in flight {self.stats.in_flight}  "
                          f"unexpected {sum(self.stats.unexpected.values())}  RSS {rss / 1024:.1f} MB  fds {fds}",
                          flush=True)
            if tasks:
                await asyncio.wait(tasks, timeout=SLOW_CLIENT_HOLD_S + CLIENT_TIMEOUT_S)
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            self.stats.samples.append((time.monotonic() - started, *proc_figures(self.lb.child.pid)))
        if self.lb.child.proc.poll() is not None:
            self.stats.bad("bbb-lb exited", self.lb.child.tail())

    def report(self) -> int:
        stats = self.stats
        print(f"\n{stats.sent} requests at {self.args.rate}/s over {self.args.minutes} min; "
              f"{stats.callbacks_received} end callbacks delivered to the integrations")
        print("\nexpected outcomes:")
        for kind, count in sorted(stats.expected.items()):
            print(f"  {count:7d}  {kind}")
        print("\nunexpected outcomes:" + ("  none" if not stats.unexpected else ""))
        for kind, count in sorted(stats.unexpected.items()):
            example = stats.examples.get(kind, "").replace("\n", " ")
            print(f"  {count:7d}  {kind}" + (f"    e.g. {example[:160]}" if example else ""))
        print(f"\nvalid calls: p50 {percentile(stats.latencies_ms, 0.50):.1f} ms, "
              f"p99 {percentile(stats.latencies_ms, 0.99):.1f} ms, max {max(stats.latencies_ms, default=0):.1f} ms "
              f"({len(stats.latencies_ms)} answers, those of the flapping server's timeouts included)")
        print(f"successful calls: p50 {percentile(stats.success_ms, 0.50):.1f} ms, "
              f"p99 {percentile(stats.success_ms, 0.99):.1f} ms ({len(stats.success_ms)} answers)")
        print("\nbbb-lb process over time:\n   time      RSS   fds")
        for elapsed, rss, fds in stats.samples:
            print(f"  {elapsed:5.0f} s {rss / 1024:6.1f} MB {fds:5d}")
        after_first_minute = next((rss for t, rss, _ in stats.samples if t >= 60), None)
        if after_first_minute and stats.samples:
            end_rss = stats.samples[-1][1]
            print(f"RSS at the end vs after the first minute: {100 * (end_rss / after_first_minute - 1):+.1f} %")
        return 1 if stats.unexpected else 0


async def start_receiver(stats: Stats) -> tuple[web.AppRunner, str]:
    """The integrations' end-callback endpoint."""
    async def ended(request: web.Request) -> web.Response:
        stats.callbacks_received += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ended/{integration}", ended)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def main_async(args: argparse.Namespace) -> int:
    command = bench.bbb_lb_command()
    if not command:
        print("soak: bbb-lb is not runnable in this venv (scripts/install)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bbb-lb-soak-"))
    env = bench.Env(argparse.Namespace(bbb_lb_command=command), workdir)
    stats_holder = Stats()
    receiver, receiver_url = await start_receiver(stats_holder)
    try:
        sim = await env.sim(args.servers, fresh=True)
        extra = {
            "integrations": [{"name": n, "secret": s} for n, s in INTEGRATIONS],
            "monitor": {"interval_s": 2, "timeout_s": 2, "down_after": 2, "up_after": 2},
            "backend": {"timeout_s": 3, "connect_timeout_s": 1},
            "callbacks": {"allowed_networks": ["127.0.0.0/8"], "retry_delays_s": [1, 2, 5]},
        }
        lb = await env.bbb_lb(sim, extra=extra)
        print(f"soak: bbb-lb pid {lb.child.pid} at {lb.url}, {args.servers} simulated servers "
              f"({sim.servers[-1].name} flaps), {args.minutes} min at {args.rate}/s; work dir {workdir}", flush=True)
        soak = Soak(args, lb, sim, receiver_url)
        soak.stats = stats_holder
        await soak.run()
        code = soak.report()
        log_text = lb.child.log.read_text(errors="replace")
        tracebacks = log_text.count("Traceback (most recent call last)")
        print(f"bbb-lb log: {tracebacks} tracebacks, {log_text.count(' ERROR ')} ERROR lines ({lb.child.log})")
        return 1 if tracebacks else code
    finally:
        env.end_run()
        await receiver.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    parser.add_argument("--servers", type=int, default=3, help="simulated BBB servers; the last one flaps")
    parser.add_argument("--sample-s", type=float, default=10.0, help="how often RSS and fds are read")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0 or args.servers < 2:
        parser.error("--rate and --minutes must be positive, --servers at least 2")
    socket.setdefaulttimeout(30)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
