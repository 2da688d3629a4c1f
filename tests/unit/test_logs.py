"""lb_core.logs: log lines are formatted and written by a listener thread, never by the caller."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import pytest

from lb_core import logs
from tests.conftest import wait_for


class RecordingStream:
    """A text stream that remembers what was written, by which thread, and how often it was flushed."""

    def __init__(self) -> None:
        self.text = ""
        self.writer_threads: set[str] = set()
        self.flushes = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.text += text
            self.writer_threads.add(threading.current_thread().name)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def stream() -> Iterator[RecordingStream]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    recording = RecordingStream()
    logs.setup("info", stream=recording)  # type: ignore[arg-type]
    try:
        yield recording
    finally:
        logs.stop()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_lines_are_formatted_and_written_off_the_calling_thread(stream: RecordingStream) -> None:
    log = logging.getLogger("bbb_lb.test")
    log.info("call=%s status=%d ms=%.1f", "create", 200, 1.25)
    log.debug("not at level info")
    line = wait_for(lambda: stream.text, what="the log line")
    assert line.endswith(" INFO bbb_lb.test: call=create status=200 ms=1.2\n")
    assert threading.current_thread().name not in stream.writer_threads
    assert "not at level" not in stream.text


def test_objects_are_rendered_as_they_were_when_logged(stream: RecordingStream) -> None:
    class Changing:
        value = "at the call"

        def __str__(self) -> str:
            return self.value

    thing = Changing()
    logging.getLogger("bbb_lb.test").warning("state %s", thing)
    thing.value = "later"
    assert wait_for(lambda: stream.text, what="the log line").endswith("WARNING bbb_lb.test: state at the call\n")


def test_tracebacks_are_kept(stream: RecordingStream) -> None:
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        logging.getLogger("bbb_lb.test").exception("failed %d times", 2)
    text = wait_for(lambda: "RuntimeError: broken" in stream.text and stream.text, what="the traceback")
    assert "ERROR bbb_lb.test: failed 2 times\nTraceback (most recent call last):" in text


def test_stop_writes_everything_queued_and_a_burst_is_flushed_together(stream: RecordingStream) -> None:
    log = logging.getLogger("bbb_lb.test")
    for i in range(2000):
        log.info("line %d", i)
    logs.stop()
    lines = stream.text.splitlines()
    assert len(lines) == 2000 and lines[-1].endswith("line 1999")
    assert stream.flushes < 2000  # not one flush (a write syscall) per line


def test_the_caller_only_queues_the_record() -> None:
    class NoFormattingHere(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise AssertionError("formatted on the calling thread")

    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logs.DeferredQueueHandler(records)
    handler.setFormatter(NoFormattingHere())
    record = logging.LogRecord("bbb_lb.api", logging.INFO, __file__, 1, "call=%s ms=%.1f", ("join", 1.25), None)
    handler.handle(record)
    queued = records.get_nowait()
    assert queued is record and queued.args == ("join", 1.25) and not hasattr(queued, "message")


def test_a_put_does_not_wake_the_listener(stream: RecordingStream) -> None:
    """The listener sleeps between polls instead of blocking on the queue, so a log call never hands the
    GIL to it (the per-record wake-up cost the event loop more than the formatting)."""
    listener = logs._listener
    assert isinstance(listener, logs.PollingQueueListener)
    records: queue.SimpleQueue[object] = queue.SimpleQueue()
    polling = logs.PollingQueueListener(records)
    with pytest.raises(queue.Empty):
        polling.dequeue(block=False)
    records.put("record")
    assert polling.dequeue(block=True) == "record"


def test_per_call_lines_reach_only_our_queue(stream: RecordingStream) -> None:
    """mitmproxy's root handlers (its add_log events, mitmweb's event store) do not see the per-call lines:
    each one would cost an event-loop wake-up and an addon hook."""
    seen: list[str] = []

    class RootHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.name)

    root = logging.getLogger()
    other = RootHandler()
    root.addHandler(other)
    try:
        logging.getLogger(logs.ACCESS_LOGGER).info("call=%s", "join")
        logging.getLogger("bbb_lb.store").warning("a warning")
        wait_for(lambda: "call=join" in stream.text and "a warning" in stream.text, what="both lines")
    finally:
        root.removeHandler(other)
    assert seen == ["bbb_lb.store"]
