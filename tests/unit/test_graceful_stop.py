"""addons.lb's part of a graceful stop: it waits for the calls being answered, and refuses late ones."""

from __future__ import annotations

import asyncio

from mitmproxy.test import tflow

from addons.lb import BbbLoadBalancer


def api_flow():  # type: ignore[no-untyped-def]
    flow = tflow.tflow()
    flow.request.path = "/bigbluebutton/api/getMeetings?checksum=" + "a" * 40
    return flow


async def test_drained_waits_for_the_calls_being_answered_then_a_quiet_moment() -> None:
    lb = BbbLoadBalancer()
    release = asyncio.Event()

    async def slow(flow) -> None:  # type: ignore[no-untyped-def]
        await release.wait()

    lb._request = slow  # type: ignore[method-assign]
    call = asyncio.create_task(lb.request(api_flow()))
    await asyncio.sleep(0)
    assert lb.in_flight == 1
    waiting = asyncio.create_task(lb.drained(timeout_s=5, quiet_s=0.05))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # a call is still being answered
    release.set()
    assert await asyncio.wait_for(waiting, 2) == 0
    await call
    assert lb.in_flight == 0


async def test_drained_gives_up_at_its_timeout_and_says_how_many_are_left() -> None:
    lb = BbbLoadBalancer()
    lb._request = lambda flow: asyncio.Event().wait()  # type: ignore[method-assign]
    call = asyncio.create_task(lb.request(api_flow()))
    await asyncio.sleep(0)
    assert await lb.drained(timeout_s=0.1, quiet_s=0.05) == 1
    call.cancel()


async def test_a_call_after_the_stop_is_refused_bbb_style_and_never_restarts_the_lb() -> None:
    lb = BbbLoadBalancer()
    await lb.done()
    flow = api_flow()
    await lb.request(flow)  # with no config, starting would raise: it must not be tried
    assert flow.response is not None and flow.response.status_code == 200
    assert b"<returncode>FAILED</returncode><messageKey>serverStopping</messageKey>" in flow.response.content
    assert lb.lb is None and lb.in_flight == 0
