"""What every admin route shares: JSON in and out, errors answered as JSON, the running LB's parts.

Route handlers raise (``BadRequest``, ``controls.NotFound``, ``ControlError``, ``ConfigError``, aiohttp's
HTTP errors); ``errors_as_json`` turns each into a JSON answer with the right status and puts the
security headers on every answer, so no handler writes an error page or a header of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from lb_core.config_types import ConfigError
from lb_core.controls import ControlError, NotFound
from lb_core.controls_integrations import IntegrationControls
from lb_core.controls_rules import RuleControls
from lb_core.controls_servers import ServerControls
from lb_core.recording_imports import RecordingImports
from lb_core.recording_service import Recordings
from lb_core.service import LoadBalancer

log = logging.getLogger("bbb_lb.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]  # method, path, handler
T = TypeVar("T")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    """The request itself is malformed (not JSON, wrong field types); answered 400."""


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


def read_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object (an empty body is ``{}``)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": ...}`` with its status; the security headers on every answer."""
    try:
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


class Running:
    """The running LB's parts a route needs, or 503 while bbb-lb is not running."""

    def __init__(self, get_lb: Callable[[], LoadBalancer | None]) -> None:
        self.get_lb = get_lb

    def lb(self) -> LoadBalancer:
        lb = self.get_lb()
        if lb is None:
            raise web.HTTPServiceUnavailable(reason="bbb-lb is not running")
        return lb

    def server_controls(self) -> ServerControls:
        return self._started(self.lb().server_controls)

    def integration_controls(self) -> IntegrationControls:
        return self._started(self.lb().integration_controls)

    def rule_controls(self) -> RuleControls:
        return self._started(self.lb().rule_controls)

    def recordings(self) -> Recordings:
        return self._started(self.lb().recordings)

    def recording_imports(self) -> RecordingImports:
        return self._started(self.lb().recording_imports)

    @staticmethod
    def _started(part: T | None) -> T:
        """A part built once the LB runs, or 503 until then."""
        if part is None:
            raise web.HTTPServiceUnavailable(reason="bbb-lb is not running")
        return part



class Routes:
    """The routes of one resource, over the running LB's parts."""

    def __init__(self, running: Running) -> None:
        self.running = running

    def routes(self) -> list[Route]:
        raise NotImplementedError
