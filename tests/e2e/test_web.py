"""``bbb-lb run --web``: mitmweb's UI, on loopback only and behind a password.

mitmproxy >= 11.1.2 checks the password itself (``web_password``: 403 and its login form, a Bearer
header, ``?token=``); on 11.0.x bbb-lb's own check does (401 with a Basic challenge, ``?token=``).
The same test runs on whichever is installed and proves the password is needed either way.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from http.client import HTTPConnection
from pathlib import Path

import pytest

from addons.webauth import mitmweb_has_password
from tests.conftest import LB, HttpReply, Simulator, free_port, http, make_lb, wait_for

PASSWORD = "pw123456789"
NATIVE = mitmweb_has_password()
DENIED = 403 if NATIVE else 401


def basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def credentials(password: str) -> dict[str, str]:
    """The header a script sends: a Bearer token to mitmproxy's own check, Basic auth to bbb-lb's."""
    return {"Authorization": f"Bearer {password}"} if NATIVE else basic(password)


def header(reply: HttpReply, name: str) -> str:
    return next((v for k, v in reply.headers.items() if k.lower() == name.lower()), "")


def websocket_handshake(port: int, headers: dict[str, str]) -> int:
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/updates", headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(), **headers})
        return connection.getresponse().status
    finally:
        connection.close()


def start_with_web_ui(lb: LB, attempts: int = 5) -> int:
    """Start ``lb`` with mitmweb's UI; its port. mitmweb cannot bind port 0 and tell which port it got
    (its web server keeps no handle on its socket), so a free port is picked here, and should another
    process take it before bbb-lb binds it, the start is tried again on another."""
    for _ in range(attempts):
        web_port = free_port()
        lb.extra_args = ["--web", "--web-port", str(web_port), "--web-password", PASSWORD]
        logged = len(lb.log()) if lb.log_path.exists() else 0
        try:
            lb.start()
            return web_port
        except AssertionError:
            if lb.process is None or lb.process.poll() is None:
                raise
            said = lb.log()[logged:]
            if f":{web_port}" not in said or "in use" not in said.lower():
                raise
            lb.process = None  # it exited: the web port was taken meanwhile
    raise AssertionError(f"no free port for mitmweb in {attempts} attempts")


def test_web_ui_needs_the_password(tmp_path: Path, sim: Simulator) -> None:
    sim.reset()
    lb = make_lb(tmp_path, sim)
    web_port = start_with_web_ui(lb)
    web = f"http://127.0.0.1:{web_port}"
    try:
        root = wait_for(lambda: _reachable(web + "/"), what="the web UI")
        assert root.status == DENIED
        if NATIVE:
            assert "Authentication Required" in root.text  # mitmproxy's login form
        else:
            assert header(root, "WWW-Authenticate") == 'Basic realm="bbb-lb"'
        assert PASSWORD not in root.text
        for path in ("/flows", "/options", "/state", "/commands", "/events", "/filter-help"):
            assert http(web + path).status == DENIED, path
        if not NATIVE:  # bbb-lb's own check comes before tornado picks a handler: unknown paths too
            assert http(web + "/no-such-page").status == DENIED
        assert http(web + "/clear", method="POST", data=b"x" * 100_000).status == DENIED
        assert http(web + "/", headers=credentials("wrong-password")).status == DENIED
        assert http(web + "/flows", headers=basic(PASSWORD) if NATIVE else credentials("x")).status == DENIED
        assert http(web + "/?token=wrong-password").status == DENIED
        assert websocket_handshake(web_port, {}) == DENIED
        assert websocket_handshake(web_port, credentials("wrong-password")) == DENIED

        page = http(web + "/", headers=credentials(PASSWORD))
        assert page.status == 200 and b"<html" in page.body.lower()
        if NATIVE:
            # Static files are mitmproxy's published UI bundle (no flow data): mitmproxy serves them openly.
            script = re.search(r'src="\./(static/[^"]+\.js)"', page.text)
            assert script and http(f"{web}/{script.group(1)}").status == 200
        else:
            assert http(web + "/static/app.js").status == DENIED
            assert http(web + "/static/app.js", headers=credentials(PASSWORD)).status == 200

        # ?token= gives out a cookie (signed, never the password) that the page and its websocket use.
        login = http(web + "/?token=" + PASSWORD)
        if NATIVE:
            assert login.status == 200
        else:
            assert login.status == 303 and header(login, "Location") == "/"  # the token leaves the address
        cookie_header = header(login, "Set-Cookie")
        assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
        assert PASSWORD not in cookie_header
        cookie_name, _, cookie_value = cookie_header.split(";", 1)[0].partition("=")
        cookie = {"Cookie": f"{cookie_name}={cookie_value}"}
        assert http(web + "/", headers=cookie).status == 200
        assert http(web + "/flows", headers={"Cookie": f"{cookie_name}=forged"}).status == DENIED
        assert websocket_handshake(web_port, {"Cookie": f"{cookie_name}=forged"}) == DENIED
        assert websocket_handshake(web_port, cookie) == 101

        reply = lb.call("create", {"meetingID": "watched", "name": "Watched"})
        assert reply.field("returncode") == "SUCCESS"

        def listed() -> list[dict]:  # type: ignore[type-arg]
            flows = http(web + "/flows", headers=cookie)
            assert flows.status == 200 and header(flows, "Content-Type").startswith("application/json")
            return [f for f in json.loads(flows.body) if "/create" in f["request"]["path"]]

        flows = wait_for(lambda: len(listed()) >= 2 and listed(), 5, what="the API call in mitmweb")
        answer = next(f for f in flows if "meetingID=watched" in f["request"]["path"])
        assert answer["comment"].startswith("create → bbb") and answer["comment"].endswith("SUCCESS")
        backend = next(f for f in flows if f is not answer)
        assert backend["comment"] == "backend call for create"
        assert backend["request"]["path"].endswith("checksum=<redacted>")
        assert http(web + "/flows", headers=credentials(PASSWORD)).status == 200
        wait_for(lambda: "token=***" in lb.log(), what="the ?token= request in the log")
        assert PASSWORD not in lb.log()  # tornado's log shows ?token= requests as token=***
    finally:
        lb.stop()


def _reachable(url: str):  # type: ignore[no-untyped-def]
    try:
        return http(url, timeout=1)
    except OSError:
        return None


def test_web_ui_start_tries_another_port_when_its_port_is_taken(tmp_path: Path, sim: Simulator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.e2e.test_web as here

    sim.reset()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = iter([taken])
        picked = here.free_port
        monkeypatch.setattr(here, "free_port", lambda: next(ports, None) or picked())
        lb = make_lb(tmp_path, sim)
        web_port = start_with_web_ui(lb)
        try:
            assert web_port != taken
            assert f"127.0.0.1:{taken} (--web-port)" in lb.log()  # the first try, given up
            assert wait_for(lambda: _reachable(f"http://127.0.0.1:{web_port}/"), what="the web UI").status == DENIED
        finally:
            lb.stop()
