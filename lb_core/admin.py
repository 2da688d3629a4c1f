"""The admin listener: operator controls (JSON under /api/), /health, /metrics and a live dashboard.

It is a separate aiohttp listener, not part of the BBB API listener, so it can bind to loopback or a
management network only. Every /api/ route needs the admin token (``Authorization: Bearer``); the
dashboard page trades ``?token=`` for a cookie once, so the token does not stay in the address bar.
/health and /metrics answer without the token: load balancers and Prometheus scrapers rarely carry
one, and neither shows anything secret (counts, server names, no URLs or secrets). The listener binds
127.0.0.1 unless ``admin.host`` says otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from lb_core.balancer import exclusion_reason
from lb_core.config import AdminConfig, ConfigError, Flag, Model, parse_request
from lb_core.controls import ControlError, Controls, NotFound
from lb_core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lb_core.metrics import LbMetrics
from lb_core.pool import Status
from lb_core.recording_service import Recordings, UploadRefused
from lb_core.series import Series
from lb_core.service import LoadBalancer
from lb_core.store import StoreError

log = logging.getLogger("bbb_lb.admin")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"dashboard.html": "text/html", "dashboard.js": "text/javascript", "plots.js": "text/javascript",
                "dashboard.css": "text/css"}
COOKIE = "bbb_lb_admin"
MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
                 "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
UNAUTHORISED_PAGE = (b"<!doctype html><meta charset=utf-8><title>bbb-lb: sign in</title>"
                     b"<p>Open <code>/dashboard?token=&lt;admin.token&gt;</code> to see the dashboard.</p>")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _import_request(body: dict[str, Any]) -> tuple[str, str | None]:
    """The archive's path (a file on the bbb-lb host) and the server it claims to come from."""
    path = body.get("path")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise BadRequest("path: expected the archive's path on the bbb-lb host")
    if not os.path.isfile(path):
        raise BadRequest(f"path: no such file {path!r} on the bbb-lb host")
    server = body.get("server")
    return path, server if isinstance(server, str) else None


class BadRequest(Exception):
    """The request itself is malformed (not JSON, wrong field types); answered 400."""


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


def dashboard_cookie(token: str) -> str:
    """What the browser keeps instead of the token: proves the token was shown, cannot be used as one."""
    return hmac.new(token.encode(), b"bbb-lb dashboard session", hashlib.sha256).hexdigest()


def lb_status(lb: LoadBalancer) -> dict[str, Any]:
    """The LB's own status plus counts over its servers, as /api/status and the dashboard show them."""
    servers = list(lb.pool)
    return {
        **lb.status(),
        "servers": len(servers),
        "servers_up": sum(1 for s in servers if s.status == Status.UP),
        "servers_usable": sum(1 for s in servers if exclusion_reason(s) is None),
        "servers_disabled": sum(1 for s in servers if s.is_disabled),
        "servers_draining": sum(1 for s in servers if s.draining),
        "participants": sum(s.participants for s in servers),
        "integrations": len(lb.integrations),
    }


async def with_nodes(lb: LoadBalancer) -> dict[str, Any]:
    """``lb_status``, and with several processes on one Redis, every live one (its last heartbeat)."""
    status = lb_status(lb)
    if lb.cluster is not None:
        try:
            status["nodes"] = await lb.cluster.nodes()
        except StoreError as exc:
            status["nodes"], status["nodes_error"] = [], str(exc)
    return status


def health(lb: LoadBalancer | None) -> tuple[int, dict[str, Any]]:
    """200 when new meetings can be placed; 503 with the reason otherwise (counts only, no names)."""
    if lb is None:
        return 503, {"status": "unavailable", "reason": "bbb-lb is not running"}
    servers = list(lb.pool)
    reasons = Counter(exclusion_reason(s) for s in servers)
    usable = reasons.pop(None, 0)
    counts = {"servers": len(servers), "servers_up": sum(1 for s in servers if s.status == Status.UP),
              "servers_usable": usable}
    if usable:
        return 200, {"status": "ok", **counts}
    if not servers:
        reason = "no servers configured"
    else:
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda r: str(r[0])))
        reason = f"no server can take new meetings ({why})"
    return 503, {"status": "unavailable", "reason": reason, **counts}


async def with_store_health(lb: LoadBalancer, status: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A store that does not answer (Redis down) makes the instance unhealthy: it can place no meeting."""
    problem = await lb.store.problem()
    payload = {**payload, "store": "unavailable" if problem else "ok"}
    if problem is None:
        return status, payload
    return 503, {**payload, "status": "unavailable", "reason": "the state store (Redis) is not reachable"}


def _object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value


class StateBody(Model):
    """POST /api/servers/{name}/state."""

    state: Literal["enabled", "disabled", "auto"]


class PanicBody(Model):
    """POST /api/servers/{name}/panic."""

    keep_state: Flag = False


class EmptyBody(Model):
    """A POST that takes no fields (drain)."""


class AdminServer:
    """The admin application on its own listener; ``get_lb`` answers the running LB (None once stopped)."""

    def __init__(self, admin: AdminConfig, get_lb: Callable[[], LoadBalancer | None], metrics: LbMetrics) -> None:
        assert admin.port is not None and admin.token, "admin.port and admin.token are checked by the config"
        self.admin = admin
        self.get_lb = get_lb
        self.metrics = metrics
        self._token = admin.token.encode()
        self._cookie = dashboard_cookie(admin.token).encode()
        self._static: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.port: int = admin.port
        self.series = Series(admin.series_resolution_s, admin.series_points)
        metrics.series = self.series  # fed by the answer path from now on
        self._ticker: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self.root)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/dashboard", self.dashboard)
        app.router.add_get("/static/{file}", self.static)
        api = [
            ("GET", "/api/status", self.status),
            ("GET", "/api/dashboard", self.dashboard_data),
            ("GET", "/api/series", self.series_data),
            ("GET", "/api/servers", self.list_servers),
            ("POST", "/api/servers", self.add_server),
            ("DELETE", "/api/servers/{name}", self.remove_server),
            ("POST", "/api/servers/{name}/state", self.set_state),
            ("POST", "/api/servers/{name}/drain", self.drain),
            ("POST", "/api/servers/{name}/panic", self.panic),
            ("GET", "/api/integrations", self.list_integrations),
            ("PUT", "/api/integrations/{name}", self.put_integration),
            ("DELETE", "/api/integrations/{name}", self.remove_integration),
            ("GET", "/api/recordings", self.list_recordings),
            ("GET", "/api/recordings/{id}", self.show_recording),
            ("POST", "/api/recordings/import", self.import_recording),
            ("POST", "/api/recordings/imports", self.start_import),
            ("GET", "/api/recordings/imports/{job}", self.import_job),
            ("POST", "/api/recordings/{id}/{action:publish|unpublish|delete}", self.recording_action),
            ("GET", "/api/integrations/{name}/rules", self.get_rules),
            ("PUT", "/api/integrations/{name}/rules", self.put_rules),
            ("PATCH", "/api/integrations/{name}/rules", self.patch_rules),
            ("GET", "/api/rules", self.get_rules),
            ("PUT", "/api/rules", self.put_rules),
            ("PATCH", "/api/rules", self.patch_rules),
            ("DELETE", "/api/rules", self.reset_rules),
        ]
        for method, path, handler in api:
            app.router.add_route(method, path, handler)
        return app

    async def start(self) -> None:
        """Bind the listener; raises OSError when the address is taken."""
        self._static = await asyncio.to_thread(
            lambda: {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES})
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.admin.host, self.admin.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._ticker = asyncio.create_task(self._tick_series(), name="bbb-lb series")
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("admin listener on http://%s:%d/ (dashboard at /dashboard, metrics at /metrics)",
                 self.admin.host, self.port)

    async def _tick_series(self) -> None:
        """Close a bucket of the dashboard's series on every step of the resolution's wall-clock grid."""
        while True:
            await asyncio.sleep(max(self.series.next_tick(time.time()) - time.time(), 0.0))
            try:
                self.series.tick(self.get_lb())
            except Exception:  # a bad sample must not stop the history for good
                log.exception("the dashboard's series could not be sampled")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- guard: auth, errors as JSON, headers -------------------------------------------------------------

    def _bearer_ok(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def _cookie_ok(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self._cookie)

    def authorised(self, request: web.Request) -> bool:
        """The bearer token always; the dashboard cookie for reading only (so no cross-site changes)."""
        return self._bearer_ok(request) or (request.method in ("GET", "HEAD") and self._cookie_ok(request))

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/api/") and not self.authorised(request):
                response: web.StreamResponse = json_response({"error": "a valid admin token is required"}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="bbb-lb"'
            else:
                response = await handler(request)
        except NotFound as exc:
            response = json_response({"error": str(exc)}, 404)
        except (ControlError, BadRequest, ConfigError) as exc:
            response = json_response({"error": str(exc)}, 400)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = json_response({"error": exc.reason}, exc.status)
            if allow := exc.headers.get("Allow"):
                response.headers["Allow"] = allow
        except Exception:
            log.exception("admin request %s %s failed", request.method, request.path)
            response = json_response({"error": "internal error; the bbb-lb log has the details"}, 500)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    def _lb(self) -> LoadBalancer:
        lb = self.get_lb()
        if lb is None:
            raise web.HTTPServiceUnavailable(reason="bbb-lb is not running")
        return lb

    def _controls(self) -> Controls:
        controls = self._lb().controls
        if controls is None:
            raise web.HTTPServiceUnavailable(reason="bbb-lb is not running")
        return controls

    # --- open routes ----------------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/dashboard")

    async def health(self, request: web.Request) -> web.Response:
        lb = self.get_lb()
        status, payload = health(lb)
        if lb is not None:
            status, payload = await with_store_health(lb, status, payload)
        return json_response(payload, status)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in STATIC_FILES or name.endswith(".html"):
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], headers={"Content-Type": STATIC_FILES[name] + "; charset=utf-8",
                                                              "Cache-Control": "no-cache"})

    async def dashboard(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token is not None:
            if not hmac.compare_digest(token.encode(), self._token):
                return web.Response(status=401, body=UNAUTHORISED_PAGE, content_type="text/html")
            response = web.Response(status=303, headers={"Location": "/dashboard"})
            response.set_cookie(COOKIE, self._cookie.decode(), httponly=True, samesite="Strict", path="/")
            return response
        if not (self._cookie_ok(request) or self._bearer_ok(request)):
            return web.Response(status=401, body=UNAUTHORISED_PAGE, content_type="text/html")
        return web.Response(body=self._static["dashboard.html"], content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": DASHBOARD_CSP})

    # --- /api/ (token checked by the guard) ------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return json_response(await with_nodes(self._lb()))

    async def dashboard_data(self, request: web.Request) -> web.Response:
        lb = self._lb()
        return json_response({"time": time.time(), "status": await with_nodes(lb),
                              "servers": self._controls().list_servers(),
                              "integrations": self._controls().list_integrations(),
                              "recent": self.metrics.recent_calls(),
                              "recordings": lb.recordings.status() if lb.recordings is not None else None})

    # --- recordings ---------------------------------------------------------------------------------------

    def _recordings(self) -> Recordings:
        recordings = self._lb().recordings
        if recordings is None:
            raise web.HTTPServiceUnavailable(reason="bbb-lb is not running")
        return recordings

    async def list_recordings(self, request: web.Request) -> web.Response:
        q = request.query
        limit = q.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
            raise BadRequest("limit: expected 1 to 10000")
        return json_response(self._recordings().list_for_operator(
            state=q.get("state", ""), integration=q.get("integration", ""), meeting_id=q.get("meeting", ""),
            limit=int(limit)))

    async def show_recording(self, request: web.Request) -> web.Response:
        recordings = self._recordings()
        doc = recordings.index.get(request.match_info["id"])
        if doc is None:
            raise NotFound(f"no recording {request.match_info['id']!r}")
        return json_response(recordings.summary(doc))

    async def recording_action(self, request: web.Request) -> web.Response:
        try:
            return json_response(await self._recordings().operator_action(request.match_info["id"],
                                                                         request.match_info["action"]))
        except KeyError:
            raise NotFound(f"no recording {request.match_info['id']!r}") from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    async def import_recording(self, request: web.Request) -> web.Response:
        """Import an archive from a path the LB can read (a spool directory shared with the BBB servers);
        answers when it is done (``/api/recordings/imports`` answers at once, for archives of any size)."""
        path, server = _import_request(_object(await request.read()))
        return json_response(await self._recordings().import_file(path, server))

    async def start_import(self, request: web.Request) -> web.Response:
        """Start an import job: 202 with its id at once; ``GET /api/recordings/imports/{job}`` until done."""
        path, server = _import_request(_object(await request.read()))
        try:
            return json_response(self._recordings().start_import(path, server), status=202)
        except UploadRefused as exc:
            return json_response({"error": str(exc)}, status=exc.status)

    async def import_job(self, request: web.Request) -> web.Response:
        job = self._recordings().import_job(request.match_info["job"])
        if job is None:
            raise NotFound(f"no import job {request.match_info['job']!r} (bbb-lb restarted since?)")
        return json_response(job)

    async def series_data(self, request: web.Request) -> web.Response:
        """The plots' history: per server load, participants and meetings; per call the answers and FAILED
        answers per second (``rate(bbb_lb_requests_total[resolution])``); per integration its meetings and
        participants beside its limits. Each list is one value per entry of ``times``, oldest first."""
        self._lb()
        return json_response(self.series.snapshot())

    async def list_servers(self, request: web.Request) -> web.Response:
        return json_response(self._controls().list_servers())

    async def add_server(self, request: web.Request) -> web.Response:
        # Validated by the service with the config's own ServerConfig model.
        spec = _object(await request.read())
        return json_response(await self._controls().add_server(spec), 201)

    async def remove_server(self, request: web.Request) -> web.Response:
        return json_response(await self._controls().remove_server(request.match_info["name"]))

    async def set_state(self, request: web.Request) -> web.Response:
        body = parse_request(StateBody, _object(await request.read()))
        return json_response(await self._controls().set_state(request.match_info["name"], body.state))

    async def drain(self, request: web.Request) -> web.Response:
        parse_request(EmptyBody, _object(await request.read()))
        return json_response(await self._controls().drain(request.match_info["name"]))

    async def panic(self, request: web.Request) -> web.Response:
        body = parse_request(PanicBody, _object(await request.read()))
        return json_response(await self._controls().panic(request.match_info["name"], keep_state=body.keep_state))

    async def list_integrations(self, request: web.Request) -> web.Response:
        return json_response(self._controls().list_integrations())

    async def put_integration(self, request: web.Request) -> web.Response:
        # Validated by the service with the config's IntegrationConfig model, merged with the current values.
        spec = _object(await request.read())
        name = request.match_info["name"]
        if spec.get("name", name) != name:
            raise BadRequest("name: must be the name in the URL")
        return json_response(await self._controls().put_integration({**spec, "name": name}))

    async def remove_integration(self, request: web.Request) -> web.Response:
        return json_response(await self._controls().remove_integration(request.match_info["name"]))

    # Rules: /api/rules are the global ones, /api/integrations/{name}/rules an integration's. The body is
    # {create|join: {parameter: {operation: value}}}; PUT replaces them all, PATCH changes the parameters
    # given (null removes a parameter's rule).

    async def get_rules(self, request: web.Request) -> web.Response:
        return json_response(self._controls().rules_of(request.match_info.get("name")))

    async def put_rules(self, request: web.Request) -> web.Response:
        body = _object(await request.read())
        return json_response(await self._controls().change_rules(request.match_info.get("name"), body,
                                                                 replace=True))

    async def reset_rules(self, request: web.Request) -> web.Response:
        return json_response(await self._controls().reset_global_rules())

    async def patch_rules(self, request: web.Request) -> web.Response:
        body = _object(await request.read())
        return json_response(await self._controls().change_rules(request.match_info.get("name"), body))
