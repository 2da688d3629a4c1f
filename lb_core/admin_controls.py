"""/api/servers, /api/integrations and /api/rules: operators' changes, each handed to its controls
(``ServerControls``, ``IntegrationControls``, ``RuleControls``).

The bodies are validated with the config's own models: a server added is a ``ServerConfig`` (by
``ServerControls``), an integration an ``IntegrationConfig`` (by ``IntegrationControls``), the small action
bodies below.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from lb_core.admin_http import BadRequest, Route, Routes, json_response, read_object
from lb_core.config_types import Flag, Model, parse_request
from lb_core.controls_integrations import IntegrationControls
from lb_core.controls_rules import RuleControls
from lb_core.controls_servers import ServerControls


class StateBody(Model):
    """POST /api/servers/{name}/state."""

    state: Literal["enabled", "disabled", "auto"]


class PanicBody(Model):
    """POST /api/servers/{name}/panic."""

    keep_state: Flag = False


class EmptyBody(Model):
    """A POST that takes no fields (drain)."""


class ServerRoutes(Routes):
    """Add, remove and steer the BBB servers."""

    def routes(self) -> list[Route]:
        return [
            ("GET", "/api/servers", self.list_all),
            ("POST", "/api/servers", self.add),
            ("DELETE", "/api/servers/{name}", self.remove),
            ("POST", "/api/servers/{name}/state", self.set_state),
            ("POST", "/api/servers/{name}/drain", self.drain),
            ("POST", "/api/servers/{name}/panic", self.panic),
        ]

    def servers(self) -> ServerControls:
        return self.running.server_controls()

    async def list_all(self, request: web.Request) -> web.Response:
        return json_response(self.servers().list_servers())

    async def add(self, request: web.Request) -> web.Response:
        # Validated by the service with the config's own ServerConfig model.
        spec = read_object(await request.read())
        return json_response(await self.servers().add_server(spec), 201)

    async def remove(self, request: web.Request) -> web.Response:
        return json_response(await self.servers().remove_server(request.match_info["name"]))

    async def set_state(self, request: web.Request) -> web.Response:
        body = parse_request(StateBody, read_object(await request.read()))
        return json_response(await self.servers().set_state(request.match_info["name"], body.state))

    async def drain(self, request: web.Request) -> web.Response:
        parse_request(EmptyBody, read_object(await request.read()))
        return json_response(await self.servers().drain(request.match_info["name"]))

    async def panic(self, request: web.Request) -> web.Response:
        body = parse_request(PanicBody, read_object(await request.read()))
        return json_response(await self.servers().panic(request.match_info["name"], keep_state=body.keep_state))


class IntegrationRoutes(Routes):
    """Add, change and remove the integrations (never showing their secrets)."""

    def routes(self) -> list[Route]:
        return [
            ("GET", "/api/integrations", self.list_all),
            ("PUT", "/api/integrations/{name}", self.put),
            ("DELETE", "/api/integrations/{name}", self.remove),
        ]

    def integrations(self) -> IntegrationControls:
        return self.running.integration_controls()

    async def list_all(self, request: web.Request) -> web.Response:
        return json_response(self.integrations().list_integrations())

    async def put(self, request: web.Request) -> web.Response:
        # Validated by the service with the config's IntegrationConfig model, merged with the current values.
        spec = read_object(await request.read())
        name = request.match_info["name"]
        if spec.get("name", name) != name:
            raise BadRequest("name: must be the name in the URL")
        return json_response(await self.integrations().put_integration({**spec, "name": name}))

    async def remove(self, request: web.Request) -> web.Response:
        return json_response(await self.integrations().remove_integration(request.match_info["name"]))


class RuleRoutes(Routes):
    """/api/rules are the global rules, /api/integrations/{name}/rules an integration's. The body is
    {create|join: {parameter: {operation: value}}}; PUT replaces them all, PATCH changes the parameters
    given (null removes a parameter's rule)."""

    def routes(self) -> list[Route]:
        return [
            ("GET", "/api/integrations/{name}/rules", self.get),
            ("PUT", "/api/integrations/{name}/rules", self.put),
            ("PATCH", "/api/integrations/{name}/rules", self.patch),
            ("GET", "/api/rules", self.get),
            ("PUT", "/api/rules", self.put),
            ("PATCH", "/api/rules", self.patch),
            ("DELETE", "/api/rules", self.reset),
        ]

    def rules(self) -> RuleControls:
        return self.running.rule_controls()

    async def get(self, request: web.Request) -> web.Response:
        return json_response(self.rules().rules_of(request.match_info.get("name")))

    async def put(self, request: web.Request) -> web.Response:
        body = read_object(await request.read())
        return json_response(await self.rules().change_rules(request.match_info.get("name"), body, replace=True))

    async def patch(self, request: web.Request) -> web.Response:
        body = read_object(await request.read())
        return json_response(await self.rules().change_rules(request.match_info.get("name"), body))

    async def reset(self, request: web.Request) -> web.Response:
        return json_response(await self.rules().reset_global_rules())
