"""Who may use the admin listener: the admin token, and the dashboard's cookie that stands for it.

Every /api/ route needs the token (``Authorization: Bearer``); the dashboard page trades ``?token=`` for
a cookie once, so the token does not stay in the address bar. The cookie is good for reading only (GET
and HEAD), so another site cannot make the browser change anything. Both compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from lb_core.admin_http import Handler, json_response

COOKIE = "bbb_lb_admin"


def dashboard_cookie(token: str) -> str:
    """What the browser keeps instead of the token: proves the token was shown, cannot be used as one."""
    return hmac.new(token.encode(), b"bbb-lb dashboard session", hashlib.sha256).hexdigest()


class AdminAuth:
    """Checks a request's credentials against the admin token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self.cookie = dashboard_cookie(token)
        self._cookie = self.cookie.encode()

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def bearer_ok(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(given.strip())

    def cookie_ok(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self._cookie)

    def authorised(self, request: web.Request) -> bool:
        """The bearer token always; the dashboard cookie for reading only (so no cross-site changes)."""
        return self.bearer_ok(request) or (request.method in ("GET", "HEAD") and self.cookie_ok(request))

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse /api/ without valid credentials; the open routes (/health, /metrics...) pass."""
        if request.path.startswith("/api/") and not self.authorised(request):
            response = json_response({"error": "a valid admin token is required"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="bbb-lb"'
            return response
        return await handler(request)
