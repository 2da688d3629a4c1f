"""A client error never carries the signed URL into a message, last_error or a flow annotation."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from mitmproxy.test import tflow

from addons.annotate import Annotate
from addons.lb import BbbLoadBalancer
from lb_core.api import Answer
from lb_core.backend import BackendClient, BackendError
from lb_core.config import parse
from lb_core.config_sections import MonitorConfig, ServerConfig
from lb_core.meetings import MeetingRegistry
from lb_core.monitor import Monitor
from lb_core.pool import Pool
from lb_core.safe_errors import describe, redact
from lb_core.trace import Handled, Trace

SIGNED = "http://bbb.example/bigbluebutton/api/getMeetings?checksum=" + "f" * 64


async def _answer(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    if mode == "garbage":
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    elif mode == "bad-length":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nabc")
    elif mode == "short":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    elif mode == "reset":
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    await writer.drain()
    writer.close()


@pytest.fixture(params=["garbage", "bad-length", "short", "reset"])
async def broken(request: pytest.FixtureRequest) -> AsyncIterator[ServerConfig]:
    mode = request.param
    server = await asyncio.start_server(lambda r, w: _answer(mode, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield ServerConfig(name=f"broken-{mode}", url=f"http://127.0.0.1:{port}/bigbluebutton/", secret="s3cret")
    server.close()


async def test_backend_errors_name_no_url(broken: ServerConfig):
    client = BackendClient(2, 1, max_body_bytes=1000)
    try:
        with pytest.raises(BackendError) as error:
            await client.call(broken, "getMeetings", "")
    finally:
        await client.close()
    message = str(error.value)
    assert "checksum" not in message and "http://" not in message and message.startswith(broken.name)


async def test_a_failed_poll_leaves_no_url_in_last_error(broken: ServerConfig):
    config = parse({"secret": "lb-secret", "servers": []})
    pool = Pool([broken])
    client = BackendClient(2, 1, max_body_bytes=1000)
    monitor = Monitor(config, pool, MeetingRegistry.__new__(MeetingRegistry), client, forget=None)  # type: ignore[arg-type]
    try:
        await monitor.poll(pool.get(broken.name))  # type: ignore[arg-type]
    finally:
        await client.close()
    server = pool.get(broken.name)
    assert server is not None and server.last_error
    assert "checksum" not in json.dumps(server.summary(config.balancer, 0.0))


def test_describe_keeps_the_reason_and_drops_the_url():
    request_info = aiohttp.RequestInfo(aiohttp.client.URL(SIGNED), "GET", {}, aiohttp.client.URL(SIGNED))  # type: ignore[arg-type]
    exc = aiohttp.ClientResponseError(request_info, (), status=400, message=f"Bad status line {SIGNED}")
    assert "checksum=" in str(exc)  # what aiohttp would have put in the log
    assert describe(exc) == "bad answer: 400 Bad status line http://bbb.example/bigbluebutton/api/getMeetings?<redacted>"
    assert describe(aiohttp.InvalidURL(SIGNED)) == "invalid URL"
    assert describe(TimeoutError()) == "timed out"
    assert describe(ConnectionResetError(104, "Connection reset by peer")) == \
        "connection error: Connection reset by peer"


def test_redact_strips_queries_and_checksums_anywhere():
    assert redact(f"x: failed, url='{SIGNED}'") == \
        "x: failed, url='http://bbb.example/bigbluebutton/api/getMeetings?<redacted>'"
    assert redact("getMeetings?checksum=abc&x=1") == "getMeetings?checksum=<redacted>&x=1"
    assert redact("a%3Fchecksum%3Dabc") == "a%3Fchecksum%3D<redacted>"
    assert len(redact("x" * 10_000)) == 200


def test_pool_last_error_is_redacted_whoever_sets_it():
    server = Pool([ServerConfig(name="s", url="http://h/bigbluebutton/", secret="s")]).get("s")
    assert server is not None
    server.record_poll_failure(f"s: {SIGNED}", False, MonitorConfig())
    assert "checksum=" not in server.last_error


def test_flow_annotations_carry_no_signed_url():
    annotate = Annotate(BbbLoadBalancer())
    flow = tflow.tflow()
    answer = Handled(Answer.xml(b"<response><returncode>FAILED</returncode></response>"), Trace(
        call="create", checksum="ok", route="routed", result="FAILED",
        backend=[{"server": "bbb1", "call": "create", "error": f"bbb1: request failed, url='{SIGNED}'"}]))
    annotate.on_answer(flow, answer, 1.0)
    children = annotate.backend_flows(flow, answer.trace)
    shown = json.dumps(flow.metadata["bbb"]) + flow.comment + "".join(str(c.error) for c in children)
    assert "checksum=" not in shown and "bbb1: request failed" in shown
