"""Hostile clients at the socket: no request stalls the LB, and nothing answers as mitmproxy.

Each test talks raw TCP to a real ``bbb-lb run`` and waits with deadlines (never sleep-then-assert).
"""

from __future__ import annotations

import socket
import ssl
import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import LB, http, wait_for

API = "/bigbluebutton/api/"


def connect(lb: LB, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", lb.port), timeout=timeout)


def read_reply(sock: socket.socket, deadline_s: float = 5.0) -> tuple[bytes, bool]:
    """What the LB sends until it closes or a whole response has arrived: (bytes, closed)."""
    data = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return data, False
    return data, False


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the LB closes ``sock`` within ``seconds`` (anything it sends first is read and dropped)."""
    _, closed = read_reply_until_close(sock, seconds)
    return closed


def read_reply_until_close(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    data = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def assert_anonymous(reply: bytes) -> None:
    """No answer names the engine or its version."""
    assert b"mitmproxy" not in reply.lower(), reply[:500]
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nserver:" not in head, head


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def lb_rss_kb(lb: LB) -> int:
    assert lb.process is not None
    for line in Path(f"/proc/{lb.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- bodies before authentication ---------------------------------------------------------------------


def test_an_8_mb_unsigned_post_is_refused_at_once_without_reading_it(lb: LB) -> None:
    """The answer comes from the head alone: the client has sent 64 KB of its 8 MB when it arrives."""
    with connect(lb) as sock:
        sock.sendall(b"POST " + API.encode() + b"getMeetings HTTP/1.1\r\nHost: lb\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8388608\r\n\r\n")
        sock.sendall(b"a" * 65536)
        reply, _ = read_reply(sock, 3.0)
    assert reply, "no answer before the body was sent"
    assert b"<returncode>FAILED</returncode>" in reply and b"requestTooLarge" in reply
    assert_anonymous(reply)


def test_a_body_past_the_small_limit_is_refused_for_calls_that_are_not_uploads(lb: LB) -> None:
    body = b"meetingID=" + b"x" * (100 * 1024)
    reply = http(lb.api + "getMeetingInfo", method="POST", data=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "requestTooLarge" in reply.text
    # an upload call keeps the large limit: the same size gets as far as the checksum check
    reply = http(lb.api + "create", method="POST", data=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "checksumError" in reply.text


def test_a_chunked_body_is_measured_as_it_streams_in(lb: LB) -> None:
    """No length to judge by: the answer comes once the body passes the call's limit, not at its end."""
    with connect(lb) as sock:
        sock.sendall(b"POST " + API.encode() + b"getMeetings HTTP/1.1\r\nHost: lb\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(2):
            sock.sendall(b"10000\r\n" + b"a" * 65536 + b"\r\n")
        reply, _ = read_reply(sock, 3.0)
    assert reply and b"requestTooLarge" in reply, reply[:300]
    assert_anonymous(reply)


def test_a_client_that_reads_only_after_sending_sees_the_answer(lb: LB) -> None:
    """The rest of a refused body is read and dropped, so the close does not reset the answer away."""
    reply = http(lb.api + "getMeetings", method="POST", data=b"a" * (8 * 1024 * 1024),
                 headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert reply.field("messageKey") == "requestTooLarge"


def test_too_many_parameters_are_refused(lb: LB) -> None:
    query = "&".join(f"p{i}=1" for i in range(1500))
    reply = http(lb.api + "getMeetings?" + query + "&checksum=" + "0" * 40)
    assert "invalidParameters" in reply.text


def test_an_8_mb_post_neither_slows_other_calls_nor_grows_memory(lb: LB) -> None:
    """Eight clients push 8 MB each while another polls the API; its latency and the LB's RSS stay put."""
    version = lb.api.rstrip("/")

    def latencies(count: int) -> list[float]:
        result = []
        for _ in range(count):
            started = time.perf_counter()
            assert http(version).status == 200
            result.append(time.perf_counter() - started)
        return result

    latencies(10)  # warm up
    quiet = statistics.median(latencies(20))
    rss_before = lb_rss_kb(lb)
    refused: list[bytes] = []

    def push() -> None:
        try:
            with connect(lb, timeout=10) as sock:
                sock.sendall(b"POST " + API.encode() + b"create HTTP/1.1\r\nHost: lb\r\n"
                             b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8388608\r\n\r\n")
                chunk = b"a" * 65536
                for _ in range(128):
                    sock.sendall(chunk)
                refused.append(read_reply(sock, 10)[0])
        except OSError:
            refused.append(b"closed")

    pushers = [threading.Thread(target=push) for _ in range(8)]
    for thread in pushers:
        thread.start()
    busy = latencies(20)
    for thread in pushers:
        thread.join(30)
    rss_after = lb_rss_kb(lb)
    print(f"version p50 quiet {quiet * 1000:.1f} ms, while 8x8 MB are pushed {statistics.median(busy) * 1000:.1f} ms;"
          f" LB RSS {rss_before // 1024} -> {rss_after // 1024} MB")
    assert len(refused) == 8
    assert statistics.median(busy) < max(10 * quiet, 0.1), (quiet, busy)
    assert rss_after - rss_before < 20 * 1024, (rss_before, rss_after)


def test_a_streamed_upload_is_cut_at_the_upload_limit(lb_factory) -> None:  # type: ignore[no-untyped-def]
    """A signed upload streaming past max_upload_bytes is cut by mitmproxy, whose answer is ours."""
    lb = lb_factory(limits={"max_upload_bytes": 100_000})
    target = lb.sign("create", "meetingID=m1").removeprefix(lb.url).encode()
    with connect(lb) as sock:
        sock.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: lb\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"10000\r\n" + b"a" * 65536 + b"\r\n")
        reply, _ = read_reply(sock, 5.0)
    assert reply and b"requestTooLarge" in reply
    assert_anonymous(reply)


# --- slow clients ----------------------------------------------------------------------------------------


FAST_LIMITS = {"request_head_timeout_s": 1.0, "idle_timeout_s": 1.5, "request_body_timeout_s": 1.0}


def test_a_request_head_that_never_completes_is_cut(lb_factory) -> None:  # type: ignore[no-untyped-def]
    lb = lb_factory(limits=FAST_LIMITS)
    with connect(lb) as sock:
        sock.sendall(b"GET /bigbluebutton/api HTTP/1.1\r\nHost: lb\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 6 and not closed:  # one header byte every 0.2 s: slowloris
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            closed = closed_within(sock, 0.2)
        assert closed, "the LB kept a connection without a request head open"
        assert time.monotonic() - started < 4


def test_an_idle_keep_alive_connection_is_closed(lb_factory) -> None:  # type: ignore[no-untyped-def]
    lb = lb_factory(limits=FAST_LIMITS)
    with connect(lb) as sock:
        sock.sendall(b"GET /bigbluebutton/api HTTP/1.1\r\nHost: lb\r\n\r\n")
        reply, closed = read_reply(sock, 5)
        assert status_of(reply) == 200 and not closed
        started = time.monotonic()
        assert closed_within(sock, 6)
        assert 1.0 < time.monotonic() - started < 4.5


def test_a_body_that_never_arrives_is_cut(lb_factory) -> None:  # type: ignore[no-untyped-def]
    lb = lb_factory(limits=FAST_LIMITS)
    with connect(lb) as sock:
        sock.sendall(b"POST " + API.encode() + b"getMeetings HTTP/1.1\r\nHost: lb\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nabc")
        assert closed_within(sock, 5)


def test_client_connections_are_bounded(lb_factory) -> None:  # type: ignore[no-untyped-def]
    lb = lb_factory(limits={"max_connections": 4, "request_head_timeout_s": 30})
    held = [connect(lb) for _ in range(4)]
    try:
        # the held connections are registered once the LB has seen them; then a fifth is refused
        def fifth_refused() -> bool:
            with connect(lb) as extra:
                extra.sendall(b"GET /bigbluebutton/api HTTP/1.1\r\nHost: lb\r\n\r\n")
                reply, closed = read_reply(extra, 2)
                return closed and not reply

        wait_for(fifth_refused, 10, what="a connection past max_connections to be refused")
    finally:
        for sock in held:
            sock.close()

    def served() -> bool:
        try:
            return http(lb.api.rstrip("/"), timeout=2).status == 200
        except OSError:
            return False

    wait_for(served, 10, what="a connection to be served again")


# --- protocol garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET /bigbluebutton/api HTTP/9.9\r\nHost: lb\r\n\r\n",
    b"GET /bigbluebutton/api HTTP/1.1\r\nHost: lb\r\nbad header line\r\n\r\n",
    b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
    b"POST /bigbluebutton/api/create HTTP/1.1\r\nHost: lb\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST /bigbluebutton/api/create HTTP/1.1\r\nHost: lb\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n",
], ids=["request-line", "version", "header-line", "connect", "cl-and-te", "double-cl", "absolute-form"])
def test_protocol_garbage_gets_a_prompt_400_or_a_close(lb: LB, garbage: bytes) -> None:
    with connect(lb) as sock:
        sock.sendall(garbage)
        reply, closed = read_reply(sock, 3)
    assert reply or closed, "the LB neither answered nor closed"
    if reply:
        assert status_of(reply) in (200, 400, 404, 405, 501), reply[:300]
    assert_anonymous(reply)
    assert http(lb.api.rstrip("/")).status == 200  # and the LB carries on


def test_a_tls_hello_on_the_plain_port_is_closed(lb: LB) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with connect(lb) as raw:
        raw.settimeout(5)
        started = time.monotonic()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)) as failure:
            context.wrap_socket(raw, server_hostname="lb.example.org")
        assert not isinstance(failure.value, TimeoutError), "the TLS handshake hung"
        assert time.monotonic() - started < 4


@pytest.mark.parametrize("query", [b"meetingID=%ff", b"meetingID=\xff", b"meetingID=%ff&checksum=" + b"0" * 40,
                                   b"meetingID=\xff\xfe&checksum=" + b"0" * 40])
def test_a_non_utf8_query_is_a_failed_answer_without_a_traceback(lb: LB, query: bytes) -> None:
    with connect(lb) as sock:
        sock.sendall(b"GET " + API.encode() + b"getMeetingInfo?" + query + b" HTTP/1.1\r\nHost: lb\r\n\r\n")
        reply, _ = read_reply(sock, 5)
    assert b"<returncode>FAILED</returncode>" in reply, reply[:400]
    assert_anonymous(reply)
    assert "Traceback" not in lb.log()


def test_the_checksum_is_checked_before_the_body_is_decoded(lb: LB) -> None:
    """An unsigned body is never decoded: a body that is not UTF-8 gets checksumError, not a decoding error."""
    body = b"meetingID=\xff\xfe&checksum=" + b"0" * 40
    reply = http(lb.api + "getMeetingInfo", method="POST", data=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.field("messageKey") == "checksumError"
    signed = lb.sign("getMeetingInfo", "meetingID=m").removeprefix(lb.api + "getMeetingInfo?")
    reply = http(lb.api + "getMeetingInfo?" + signed, method="POST", data=b"x=\xff",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.field("messageKey") == "invalidParameters"  # decoded only once the caller is known
