"""``bbb-lb replay``: send a captured session to another load balancer and report what answers differently.

Reading flow files is mitmproxy's business, so it lives here; re-signing, prefixing and judging
answers are in ``lb_core.replay``. mitmproxy and aiohttp are imported only when a replay runs:
``bbb-lb`` builds its whole parser for every command, and they would slow down ``bbb-lb servers list``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lb_core import replay

if TYPE_CHECKING:
    import aiohttp
    from mitmproxy import http

SECRET_ENV = "BBB_REPLAY_SECRET"


@dataclass
class Captured:
    """One captured API request and how the load balancer answered it."""

    call: str
    method: str
    path: str
    raw_query: str
    body: bytes
    content_type: str
    timestamp: float
    checksum_state: str
    meeting_id: str
    recorded: replay.Outcome


@dataclass
class Result:
    index: int
    captured: Captured
    replayed: replay.Outcome
    resigned: bool
    differences: list[str] = field(default_factory=list)
    follow_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index, "call": self.captured.call, "method": self.captured.method,
            "meetingID": self.captured.meeting_id, "resigned": self.resigned,
            "recorded": self.captured.recorded.to_json(), "replayed": self.replayed.to_json(),
            "differences": self.differences,
        }
        if self.follow_status is not None:
            data["follow_status"] = self.follow_status
        return data


def captured_call(flow: http.HTTPFlow) -> Captured | None:
    """The API request a flow holds, or None for anything else (the API index, synthetic backend flows)."""
    if "bbb_backend_of" in flow.metadata or flow.response is None:
        return None
    path, _, raw_query = flow.request.path.partition("?")
    name = replay.call_name(path)
    if name is None:
        return None
    bbb = flow.metadata.get("bbb") or {}
    response = flow.response
    recorded = replay.outcome(response.status_code, response.get_content(strict=False) or b"",
                              response.headers.get("location"))
    return Captured(
        call=name, method=flow.request.method, path=path, raw_query=raw_query,
        body=flow.request.get_content(strict=False) or b"",
        content_type=flow.request.headers.get("content-type", ""),
        timestamp=flow.request.timestamp_start, checksum_state=str(bbb.get("checksum", "")),
        meeting_id=str(bbb.get("meetingID") or ""), recorded=recorded,
    )


def load(paths: list[str]) -> list[Captured]:
    """Every API call in the files (rotated pieces may be given together), in the order they were made."""
    from mitmproxy import exceptions, http, io

    calls: list[Captured] = []
    for path in paths:
        with open(path, "rb") as f:
            try:
                for flow in io.FlowReader(f).stream():
                    if isinstance(flow, http.HTTPFlow) and (call := captured_call(flow)) is not None:
                        calls.append(call)
            except exceptions.FlowReadException as exc:
                print(f"bbb-lb replay: {path}: read stopped early: {exc}", file=sys.stderr)
    calls.sort(key=lambda c: c.timestamp)
    return calls


async def send(session: aiohttp.ClientSession, captured: Captured, target: str, secret: str, prefix: str,
               follow: bool) -> tuple[replay.Outcome, bool, int | None]:
    import aiohttp
    from yarl import URL

    resign = replay.should_resign(captured.raw_query, captured.body.decode("utf-8", "replace"),
                                  captured.checksum_state, captured.recorded)
    rewritten = replay.rewrite(captured.call, captured.raw_query, captured.body, captured.content_type, secret,
                               prefix=prefix, resign_it=resign)
    url = replay.target_url(target, captured.path, rewritten.query)
    headers = {"Content-Type": captured.content_type} if rewritten.body and captured.content_type else {}
    try:
        # encoded=True: yarl would otherwise re-encode the query and break the checksum.
        async with session.request(captured.method, URL(url, encoded=True), data=rewritten.body or None,
                                   headers=headers, allow_redirects=False) as response:
            body = await response.read()
            location = response.headers.get("Location")
            outcome = replay.outcome(response.status, body, location)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return replay.Outcome(0, error=f"{type(exc).__name__}: {exc}"[:200]), rewritten.resigned, None
    follow_status = None
    if follow and outcome.redirect and location:
        try:
            async with session.get(URL(location, encoded=True), allow_redirects=False) as followed:
                await followed.read()
                follow_status = followed.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            follow_status = 0
    return outcome, rewritten.resigned, follow_status


async def run_replay(calls: list[Captured], *, target: str, secret: str, prefix: str, pace: str, follow: bool,
                     timeout_s: float) -> list[Result]:
    import aiohttp

    results: list[Result] = []
    offsets = replay.offsets([c.timestamp for c in calls])
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, skip_auto_headers=("User-Agent",),
                                     headers={"User-Agent": "bbb-lb-replay"}) as session:
        started = time.monotonic()
        for index, (captured, offset) in enumerate(zip(calls, offsets, strict=True), 1):
            if pace == "original":
                delay = started + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            outcome, resigned, follow_status = await send(session, captured, target, secret, prefix, follow)
            differences = replay.compare(captured.recorded, outcome)
            if follow_status is not None and not 0 < follow_status < 400:
                differences.append(f"following the redirect answered HTTP {follow_status}")
            results.append(Result(index, captured, outcome, resigned, differences, follow_status))
    return results


def report_line(result: Result) -> str:
    where = f" meetingID={result.captured.meeting_id}" if result.captured.meeting_id else ""
    return f"#{result.index} {result.captured.call}{where}: {'; '.join(result.differences)}"


def cmd_replay(args: argparse.Namespace) -> int:
    secret = args.secret or os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"bbb-lb replay: give the target's secret with --secret or ${SECRET_ENV}", file=sys.stderr)
        return 2
    try:
        calls = load(args.capture)
    except OSError as exc:
        print(f"bbb-lb replay: {exc}", file=sys.stderr)
        return 2
    results = asyncio.run(run_replay(calls, target=args.target, secret=secret, prefix=args.prefix,
                                     pace=args.pace, follow=args.follow_redirects, timeout_s=args.timeout))
    different = [r for r in results if r.differences]
    for result in different:
        print(report_line(result))
    line = replay.summary(len(results), len(different))
    print(line)
    if args.report:
        report = {"target": args.target, "prefix": args.prefix, "pace": args.pace, "replayed": len(results),
                  "identical": len(results) - len(different), "different": len(different), "summary": line,
                  "calls": [r.to_json() for r in results]}
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if different else 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay", help="replay a capture (bbb-lb run --save) against another load balancer and compare answers")
    parser.add_argument("capture", nargs="+", help="capture file(s); rotated pieces may be given together")
    parser.add_argument("--target", required=True, help="base URL of the target, e.g. http://127.0.0.1:8090")
    parser.add_argument("--secret", default="", help=f"the target's API secret (or set ${SECRET_ENV})")
    parser.add_argument("--prefix", default="", help="prefix every meetingID (replay next to the original)")
    parser.add_argument("--pace", choices=("original", "fast"), default="original",
                        help="keep the captured gaps between requests (default) or send back to back")
    parser.add_argument("--follow-redirects", action="store_true",
                        help="also GET each join redirect and record its status")
    parser.add_argument("--report", default="", help="write a JSON report to this file")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per request (default 15)")
    parser.set_defaults(handler=cmd_replay)
