"""How the ``bbb-lb run`` process is tuned: ``python -O`` (no debug-only per-request type checks in
mitmproxy) and a start-up heap the cyclic GC no longer walks."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from addons import cli
from addons.runner import FreezeStartupHeap
from tests.conftest import LB


def test_run_re_executes_itself_under_dash_o(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.KEEP_ASSERTS_ENV, raising=False)
    if sys.flags.optimize:
        pytest.skip("pytest itself runs under -O")
    argv = cli.optimised_argv(["run", "--config", "x.yaml"])
    assert argv == [sys.executable, "-O", "-m", "addons.cli", "run", "--config", "x.yaml"]
    assert cli.optimised_argv(["servers", "list"]) is None  # only the server process
    monkeypatch.setenv(cli.KEEP_ASSERTS_ENV, "1")
    assert cli.optimised_argv(["run"]) is None


def test_the_served_process_is_optimised_and_keeps_its_pid(lb: LB) -> None:
    assert lb.process is not None
    cmdline = Path(f"/proc/{lb.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-O" in cmdline and b"run" in cmdline  # the pid the test started, re-executed in place
    assert lb.call("getMeetings").status == 200


def test_the_start_up_heap_is_frozen_once_serving() -> None:
    gc.unfreeze()
    try:
        addon = FreezeStartupHeap()
        addon.running()
        assert addon.frozen > 1000 and gc.get_freeze_count() == addon.frozen
    finally:
        gc.unfreeze()
