"""A password for mitmweb's UI in ``bbb-lb run --web``.

mitmproxy 11.1.2 and later (they need Python 3.12) protect mitmweb themselves: bbb-lb sets their
``web_password`` option and only keeps ``?token=<password>`` out of tornado's log.

mitmproxy 11.0.x (the newest that runs on Python 3.11) serves its UI to anyone who can connect, and
whoever reaches it can read every flow and replay or edit requests. For it alone, ``WebAuth`` below
checks every request to the tornado app (pages, static files, the JSON API and the ``/updates``
websocket, even unknown paths) before a handler is chosen: HTTP Basic auth with any user name and
the password, or the cookie given out once ``/?token=<password>`` has been opened; anything else
gets 401. Delete ``WebAuth`` and its handlers once the minimum mitmproxy is 11.1.2.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode

import tornado.web

PASSWORD_ENV = "BBB_LB_WEB_PASSWORD"
COOKIE = "bbb-lb-web"
CHALLENGE = 'Basic realm="bbb-lb"'
_TOKEN_IN_URI = re.compile(r"([?&]token=)[^&\s]*")


def mitmweb_has_password() -> bool:
    """Whether this mitmproxy protects mitmweb itself (its ``web_password`` option, from 11.1.2)."""
    from mitmproxy.tools.web import webaddons

    return hasattr(webaddons, "WebAuth")


class RedactToken(logging.Filter):
    """Rewrites ``token=<password>`` to ``token=***`` in the request URIs tornado logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_URI.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        record.msg = _TOKEN_IN_URI.sub(r"\1***", str(record.msg))
        return True


def resolve_password(given: str) -> tuple[str, bool]:
    """The password (``--web-password``, else $BBB_LB_WEB_PASSWORD, else a random one) and whether it was made up."""
    password = given or os.environ.get(PASSWORD_ENV, "")
    if password:
        return password, False
    return secrets.token_urlsafe(18), True


class WebAuth:
    """Checks requests against one password; ``protect`` installs the check on a tornado application."""

    def __init__(self, password: str) -> None:
        self._password = password.encode()
        # The cookie proves the password was given without containing it; a new key per process,
        # so a cookie ends with the process that gave it out.
        self.cookie_value = hmac.new(secrets.token_bytes(32), self._password, hashlib.sha256).hexdigest()
        self.set_cookie = f"{COOKIE}={self.cookie_value}; Path=/; HttpOnly; SameSite=Strict"

    def password_ok(self, candidate: bytes) -> bool:
        return hmac.compare_digest(candidate, self._password)

    def basic_ok(self, authorization: str) -> bool:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _user, colon, password = decoded.partition(b":")
        return bool(colon) and self.password_ok(password)

    def cookie_ok(self, request: Any) -> bool:
        try:
            morsel = request.cookies.get(COOKIE)
        except Exception:  # a malformed Cookie header
            return False
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self.cookie_value.encode())

    def protect(self, app: tornado.web.Application) -> None:
        """Check every request before the application picks its handler."""
        route = app.find_handler
        auth = self

        def find_handler(request: Any, **kwargs: Any) -> Any:
            token = request.query_arguments.get("token")
            if token:
                request.uri = redact(request)  # what tornado's access log shows
                if auth.password_ok(token[-1]):
                    return app.get_handler_delegate(request, TokenAccepted, {"auth": auth})
            if auth.cookie_ok(request):
                return route(request, **kwargs)
            if auth.basic_ok(request.headers.get("Authorization", "")):
                request.bbb_lb_give_cookie = True  # so a browser's websocket can use the cookie
                return route(request, **kwargs)
            return app.get_handler_delegate(request, Unauthorized)

        class GiveCookie(tornado.web.OutputTransform):
            def __init__(self, request: Any) -> None:
                self.give = getattr(request, "bbb_lb_give_cookie", False)

            def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes,
                                      finishing: bool) -> tuple[int, Any, bytes]:
                if self.give:
                    headers.add("Set-Cookie", auth.set_cookie)
                return status_code, headers, chunk

        app.find_handler = find_handler  # type: ignore[method-assign]
        app.transforms.append(GiveCookie)


def without_token(request: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in parse_qsl(request.query, keep_blank_values=True) if k != "token"]


def redact(request: Any) -> str:
    rest = urlencode(without_token(request))
    return f"{request.path}?{rest}&token=***" if rest else f"{request.path}?token=***"


@tornado.web.stream_request_body  # an unauthenticated body is never buffered
class Unauthorized(tornado.web.RequestHandler):
    def check_xsrf_cookie(self) -> None:  # 401, not mitmweb's 403 for a missing XSRF token
        pass

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", CHALLENGE)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish("bbb-lb web UI: log in with the password (any user name), or open /?token=<password>\n")

    def data_received(self, chunk: bytes) -> None:
        pass


class TokenAccepted(tornado.web.RequestHandler):
    """``?token=<password>``: give out the cookie and send the browser on without the token in the address."""

    def initialize(self, auth: WebAuth) -> None:
        self.auth = auth

    def check_xsrf_cookie(self) -> None:
        pass

    def prepare(self) -> None:
        rest = without_token(self.request)
        path = self.request.path if self.request.path.startswith("/") and not self.request.path.startswith("//") else "/"
        self.set_status(303)
        self.add_header("Set-Cookie", self.auth.set_cookie)
        self.set_header("Location", path + ("?" + urlencode(rest) if rest else ""))
        self.set_header("Cache-Control", "no-store")
        self.finish()


def protect_web(master: Any, opts: Any, password: str, generated: bool, port: int) -> None:
    """Give ``bbb-lb run --web`` its password; print the login URL once if the password was made up."""
    for name in ("tornado.access", "tornado.general"):  # both log request URIs
        tornado_log = logging.getLogger(name)
        if not any(isinstance(f, RedactToken) for f in tornado_log.filters):
            tornado_log.addFilter(RedactToken())
    if mitmweb_has_password():
        opts.update(web_password=password)
    else:
        WebAuth(password).protect(master.app)
    if generated:
        print(f"bbb-lb web UI: http://127.0.0.1:{port}/?token={password}", file=sys.stderr, flush=True)
