"""The gateway's rooms: one registry of calls (checked against the README), typed checksum verdicts on
the trace, the answer as HTTP only, and integrations owned in one place that every part asks."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lb_core import errors
from lb_core.api import API_PREFIX, Answer, Request
from lb_core.handlers import CALLS
from tests.conftest import REPO

HANDLERS = REPO / "lb_core" / "handlers"


def readme_call_table() -> dict[str, str]:
    """Call name -> the bold route word of its row in README's "How each API call is handled"."""
    text = (REPO / "README.md").read_text()
    table = text.split("## How each API call is handled", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        names, how = line.strip("|").split("|", 1)
        route = re.search(r"\*\*(.+?)\*\*", how)
        for name in re.findall(r"`([A-Za-z]+)`", names):
            rows[name] = route.group(1) if route else ""
    return rows


def test_the_readme_call_table_is_the_registry() -> None:
    rows = readme_call_table()
    assert set(rows) - {"getJoinUrl"} == set(CALLS)
    assert {name: rows[name] for name in CALLS} == {name: spec.route for name, spec in CALLS.items()}


def test_a_call_is_found_by_its_name_in_one_handler_file() -> None:
    for name in CALLS:
        hits = [p.name for p in HANDLERS.glob("*.py") if re.search(rf'@bbb_call\([^)]*"{name}"', p.read_text())]
        assert len(hits) == 1, (name, hits)


def test_the_answer_is_http_only() -> None:
    assert [f.name for f in dataclasses.fields(Answer)] == ["status", "body", "headers"]


@pytest.mark.parametrize(("query", "verdict", "error"), [
    ("meetingID=x", "missing", errors.ChecksumMissing),
    ("meetingID=x&checksum=" + "0" * 40, "mismatch", errors.ChecksumMismatch),
])
async def test_checksum_failures_are_typed_and_on_the_trace(lb, query, verdict, error) -> None:
    reply = await lb.http(f"{API_PREFIX}/getMeetingInfo?{query}")
    assert reply.field("messageKey") == "checksumError"
    assert lb.answers[-1].trace.checksum == verdict and lb.answers[-1].trace.call == "getMeetingInfo"
    request = Request("GET", f"{API_PREFIX}/getMeetingInfo", query, {}, b"", "127.0.0.1")
    with pytest.raises(error):
        lb.lb.gateway.verifier.verify(CALLS["getMeetingInfo"], request)


async def test_a_create_traces_its_placement_and_backend_call(lb) -> None:
    reply = await lb.call("create", {"meetingID": "traced", "name": "Traced"})
    assert reply.field("returncode") == "SUCCESS"
    trace = lb.answers[-1].trace
    assert (trace.call, trace.integration, trace.meeting_id, trace.checksum) == ("create", "default", "traced", "ok")
    assert trace.route == "routed" and trace.result == "SUCCESS" and trace.server
    assert trace.decision is not None and trace.decision["candidates"]
    assert [(e["server"], e["call"], e["status"]) for e in trace.backend] == [(trace.server, "create", 200)]


async def test_an_integration_changed_at_run_time_is_seen_by_every_part(lb) -> None:
    secret = "moodle-secret-0123456789"
    assert (await lb.call("getMeetings", secret=secret)).field("messageKey") == "checksumError"
    await lb.lb.integration_controls.put_integration({"name": "moodle", "secret": secret})
    assert (await lb.call("getMeetings", secret=secret)).field("returncode") == "SUCCESS"
    assert lb.answers[-1].trace.integration == "moodle"
    assert lb.lb.deliveries.integrations.get("moodle") is lb.lb.integrations.get("moodle")  # one owner
    await lb.lb.integration_controls.remove_integration("moodle")
    assert (await lb.call("getMeetings", secret=secret)).field("messageKey") == "checksumError"


def test_uploads_are_declared_on_their_handlers() -> None:
    """The large body limit follows the registry: no second list of upload calls."""
    assert {name for name, spec in CALLS.items() if spec.upload} == {"create", "insertDocument",
                                                                     "putRecordingTextTrack"}
