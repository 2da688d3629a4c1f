"""``bbb-lb run --web``: mitmweb's UI, on loopback only and behind a password."""

from __future__ import annotations

import base64
import json
from http.client import HTTPConnection
from pathlib import Path

from tests.conftest import HttpReply, Simulator, free_port, http, make_lb, wait_for

PASSWORD = "pw123456789"


def basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


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


def test_web_ui_needs_the_password(tmp_path: Path, sim: Simulator) -> None:
    sim.reset()
    web_port = free_port()
    lb = make_lb(tmp_path, sim)
    lb.extra_args = ["--web", "--web-port", str(web_port), "--web-password", PASSWORD]
    lb.start()
    web = f"http://127.0.0.1:{web_port}"
    try:
        root = wait_for(lambda: _reachable(web + "/"), what="the web UI")
        assert root.status == 401
        assert header(root, "WWW-Authenticate") == 'Basic realm="bbb-lb"'
        assert PASSWORD not in root.text
        for path in ("/flows", "/static/app.js", "/options", "/no-such-page"):
            assert http(web + path).status == 401, path
        assert http(web + "/clear", method="POST", data=b"x" * 100_000).status == 401
        assert http(web + "/", headers=basic("wrong-password")).status == 401
        assert http(web + "/?token=wrong-password").status == 401
        assert websocket_handshake(web_port, {}) == 401
        assert websocket_handshake(web_port, basic("wrong-password")) == 401

        page = http(web + "/", headers=basic(PASSWORD))
        assert page.status == 200 and b"<html" in page.body.lower()
        assert http(web + "/static/app.js", headers=basic(PASSWORD)).status == 200

        # ?token= gives out the cookie (an HMAC, never the password) and drops the token from the address.
        login = http(web + "/?token=" + PASSWORD)
        assert login.status == 303 and header(login, "Location") == "/"
        cookie_header = header(login, "Set-Cookie")
        assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
        assert PASSWORD not in cookie_header
        cookie = {"Cookie": cookie_header.split(";", 1)[0]}
        assert http(web + "/", headers=cookie).status == 200
        assert http(web + "/flows", headers={"Cookie": "bbb-lb-web=forged"}).status == 401
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
        assert http(web + "/flows", headers=basic(PASSWORD)).status == 200
        assert PASSWORD not in lb.log()  # tornado logs ?token= requests as token=***
    finally:
        lb.stop()


def _reachable(url: str):  # type: ignore[no-untyped-def]
    try:
        return http(url, timeout=1)
    except OSError:
        return None
