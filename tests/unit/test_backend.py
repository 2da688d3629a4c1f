"""The backend client against a real local HTTP server."""

import pytest
from aiohttp import web

from lb_core import checksum
from lb_core.backend import BackendClient, BackendError
from lb_core.config_sections import ServerConfig
from tests.conftest import serving


@pytest.fixture
async def server(unused_tcp_port_factory=None):  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.rel_url.raw_query_string)
        size = int(request.query.get("size", "10"))
        return web.Response(body=b"<r>" + b"x" * size + b"</r>", content_type="text/xml")

    app = web.Application()
    app.router.add_get("/bigbluebutton/api/{call}", handle)
    async with serving(app) as port:
        yield ServerConfig(name="s", url=f"http://127.0.0.1:{port}/bigbluebutton/", secret="sec", checksum="sha1"), seen


async def test_large_answers_arrive_whole_and_oversized_ones_are_refused(server):
    config, _ = server
    client = BackendClient(5, 2, max_body_bytes=3_000_000)
    try:
        reply = await client.call(config, "getMeetings", "size=2000000")
        assert len(reply.body) == 2_000_007 and reply.body.endswith(b"</r>")
        with pytest.raises(BackendError, match="max_body_bytes"):
            await client.call(config, "getMeetings", "size=4000000")
    finally:
        await client.close()


async def test_the_query_goes_out_byte_for_byte(server):
    config, seen = server
    client = BackendClient(5, 2, max_body_bytes=1000)
    query = "name=Room+%281%29+%26+co%21&x=%7E&y=it's*"
    try:
        await client.call(config, "create", query)
    finally:
        await client.close()
    assert seen[-1] == checksum.sign("create", query, "sec", "sha1")


async def test_a_refused_connection_is_reported_as_such():
    client = BackendClient(2, 1, max_body_bytes=1000)
    dead = ServerConfig(name="dead", url="http://127.0.0.1:9/bigbluebutton/", secret="s")
    try:
        with pytest.raises(BackendError) as error:
            await client.call(dead, "getMeetings", "")
        assert error.value.refused
    finally:
        await client.close()
