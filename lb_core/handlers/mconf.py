"""The Mconf-LB extras: getServers and getMeetingEvents (answered by the LB), and config.xml."""

from __future__ import annotations

from lb_core import bbbxml, checksum, configxml, errors
from lb_core.api import FORM, Answer
from lb_core.backend import BackendError
from lb_core.calls import bbb_call
from lb_core.errors import ApiError
from lb_core.events import EventQueryError, parse_query
from lb_core.handlers.context import Context

GEOLOC_FIELDS = ("address", "ip", "countryCode", "countryCode3", "countryName", "city", "latitude", "longitude",
                 "continentCode")


@bbb_call("getServers", route="local")
async def get_servers(ctx: Context) -> Answer:
    """Every server as the Mconf-LB listed them; never a secret."""
    servers = []
    for server in ctx.services.pool:
        geo = server.geoloc
        servers.append(("server", [
            ("name", server.name), ("address", server.address), ("url", server.base_url),
            ("apiUrl", server.api_url), ("status", int(server.status)),
            ("disableState", int(server.disable_state)),
            ("geoloc", [(key, geo.get(key, "")) for key in GEOLOC_FIELDS]),
            ("isDisabled", server.is_disabled),
        ]))
    return ctx.success([("servers", servers)])


@bbb_call("getMeetingEvents", route="local")
async def get_meeting_events(ctx: Context) -> Answer:
    try:
        query = parse_query(ctx.call.pairs)
    except EventQueryError as exc:
        raise errors.invalid_parameter(str(exc)) from None
    found = await ctx.services.events.query(ctx.call.integration.name, query)
    return ctx.success([("events", [("event", e.to_xml_fields()) for e in found])])


@bbb_call("getDefaultConfigXML")
async def get_default_config_xml(ctx: Context) -> Answer:
    """A healthy server's config.xml, its URLs pointing at the LB."""
    services, trace = ctx.services, ctx.trace
    candidates = [s for s in services.pool if s.healthy and not s.is_disabled] or services.forwarder.fan_out_servers()
    if not candidates:
        raise errors.no_server_available()
    server = candidates[0]
    try:
        reply = await services.forwarder.forward(server, ctx.call, trace)
    except BackendError as exc:
        raise errors.backend_timeout() if exc.timeout else errors.server_unavailable() from None
    trace.route = "routed"
    try:
        root = bbbxml.parse(reply.body)
    except bbbxml.XmlError:
        raise errors.backend_error() from None
    if root.tag == "response":
        return services.forwarder.relay(reply, trace)[0]
    text = await configxml.rewrite_urls_off_loop(reply.body.decode("utf-8", "replace"), server.base_url,
                                                services.config.public_url)
    trace.result = "SUCCESS"
    return Answer(200, text.encode(), dict(bbbxml.XML_HEADERS))


@bbb_call("setConfigXML", content_types=(FORM,))
async def set_config_xml(ctx: Context) -> Answer:
    """The config.xml travels in a form body, its URLs pointing back at the meeting's server."""
    call, services = ctx.call, ctx.services
    server = ctx.server_of(ctx.require_meeting())
    config_xml = call.param("configXML")
    if not config_xml:
        raise ApiError("configXMLError", "You did not pass a config XML.")
    try:
        bbbxml.parse(config_xml.encode())
    except bbbxml.XmlError:
        raise ApiError("configXMLError", "The config XML is not valid XML.") from None
    rewritten = await configxml.rewrite_urls_off_loop(config_xml, services.config.public_url, server.base_url)
    pairs = [(k, rewritten if k == "configXML" else v) for k, v in call.pairs if k != "checksum"]
    body_query = checksum.legacy_params_query(pairs)
    signed = checksum.sign(call.name, body_query, server.config.secret, server.config.checksum)
    try:
        reply = await services.backend.call(server.config, call.name, "", method="POST", body=signed.encode(),
                                            content_type=FORM)
    except BackendError as exc:
        raise errors.backend_timeout() if exc.timeout else errors.server_unavailable() from None
    ctx.trace.backend.append({"server": server.name, "call": call.name, "status": reply.status})
    ctx.trace.server = server.name
    return services.forwarder.relay(reply, ctx.trace)[0]
