"""The import worker (tar, copy of a 100 MB archive) takes only CPU the API process leaves over."""

from __future__ import annotations

import os

import pytest


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_the_import_worker_runs_at_idle_cpu_priority(lb) -> None:  # type: ignore[no-untyped-def]
    """A nice level (the worker ran at nice 10) only shares a core out over the next milliseconds: a join
    waking the event loop waited behind the import, which raised join p99 during imports. SCHED_IDLE
    gives the core to the event loop at once."""
    imports = lb.lb.recording_imports
    assert await imports._in_worker(os.sched_getscheduler, 0) == os.SCHED_IDLE
    assert await imports._in_worker(os.getpriority, os.PRIO_PROCESS, 0) == 19
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the API process itself is untouched


def test_the_import_copies_in_short_system_calls() -> None:
    """A kernel without preemption (PREEMPT_NONE) runs each read or write to its end: 1 MiB copies kept a
    woken event loop waiting ~0.5-1 ms on a shared core (p99 wake-up lateness 0.84 ms against 0.19 ms
    without an import; 64 KiB copies: 0.2-0.3 ms). The bound is the fix."""
    from lb_core import recording_archive

    assert recording_archive.COPY_CHUNK <= 64 * 1024
