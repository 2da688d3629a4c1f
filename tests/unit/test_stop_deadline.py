"""The last resort of a SIGTERM stop (``addons.runner.arm_stop_deadline``): a stop that still hangs past its
deadline says where every task was and exits 1 by itself, before systemd's SIGKILL would end it silently."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO

# A stop that hangs where no timeout reaches: a task that ignores cancellation, awaited by asyncio.run's
# own teardown once main() returns (past every bound bbb-lb's code sets).
HANGING_STOP = """
import asyncio
from addons.runner import arm_stop_deadline

async def stubborn() -> None:
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass

async def main() -> None:
    asyncio.create_task(stubborn(), name="stubborn-redis-cleanup")
    arm_stop_deadline(asyncio.get_running_loop(), 0.5)
    await asyncio.sleep(0)

asyncio.run(main())
print("exited normally")
"""


def test_a_stop_hanging_past_its_deadline_dumps_its_tasks_and_exits_1():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", HANGING_STOP], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    took = time.monotonic() - started
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr[-2000:])
    assert took < 10, took
    assert "exited normally" not in result.stdout
    tasks, threads = result.stderr.split("Threads:")
    assert "bbb-lb: the stop did not finish within 0.5 s; exiting now" in tasks
    assert "stubborn-redis-cleanup" in tasks and "in stubborn" in tasks  # the task and where it hung
    assert "_cancel_all_tasks" in threads  # the main thread: in asyncio.run's teardown


def test_a_stop_that_ends_in_time_is_not_cut_short():
    quick = HANGING_STOP.replace('asyncio.create_task(stubborn(), name="stubborn-redis-cleanup")', "")
    result = subprocess.run([sys.executable, "-c", quick], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "exited normally" in result.stdout, result.stderr[-2000:]
