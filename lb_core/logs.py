"""Logging set-up: one line per API call, formatted and written off the event loop.

Loggers hand their records to a ``QueueHandler`` (a queue put, nothing more); a ``QueueListener``
thread formats them and writes them to stderr. A burst of records is written with one flush.

The listener polls the queue rather than blocking on it: a blocked reader is woken by every put, and at
thousands of calls a second that wake-up (a thread switch and a fight for the GIL per log line) cost the
event loop more than the formatting we moved off it. The per-call lines (``bbb_lb.api``) go to this queue
only: mitmproxy's root handlers would schedule an ``add_log`` event on the loop for each of them.
"""

from __future__ import annotations

import atexit
import io
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
# Arguments of these types cannot change between the log call and the listener's formatting.
_IMMUTABLE = (str, int, float, bool, type(None), bytes)
# How long a line may wait in the queue; also the listener's idle wake-up interval.
POLL_INTERVAL_S = 0.05
ACCESS_LOGGER = "bbb_lb.api"


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """Queues the record as it is: the stock ``prepare`` would format it here, on the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        args = record.args
        if args and not (isinstance(args, tuple) and all(isinstance(a, _IMMUTABLE) for a in args)):
            # An object could change before the listener gets to it: take its text now.
            record.msg = record.getMessage()
            record.args = None
        return record


class BurstFlushingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for the listener thread: writes each record, flushes once the queue is empty."""

    def __init__(self, stream: TextIO, pending: queue.SimpleQueue[Any]) -> None:
        super().__init__(stream)
        self.pending = pending

    def flush(self) -> None:
        if self.pending.empty():
            super().flush()


class PollingQueueListener(logging.handlers.QueueListener):
    """Drains the queue every ``POLL_INTERVAL_S``: a put never wakes this thread (see the module doc)."""

    def dequeue(self, block: bool) -> Any:
        while True:
            try:
                return self.queue.get_nowait()
            except queue.Empty:
                if not block:
                    raise
                time.sleep(POLL_INTERVAL_S)


_listener: logging.handlers.QueueListener | None = None


def _stderr() -> TextIO:
    """stderr with a block buffer (sys.stderr writes every line on its own)."""
    try:
        return open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding=sys.stderr.encoding,  # noqa: SIM115
                    errors="backslashreplace", closefd=False)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr


def setup(level: str, stream: TextIO | None = None) -> None:
    """Route every log record through a queue to a listener thread that writes ``stream`` (stderr)."""
    global _listener
    stop()
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    writer = BurstFlushingStreamHandler(stream if stream is not None else _stderr(), records)
    writer.setFormatter(logging.Formatter(LOG_FORMAT))
    _listener = PollingQueueListener(records, writer, respect_handler_level=True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(DeferredQueueHandler(records))
    access = logging.getLogger(ACCESS_LOGGER)
    for old in list(access.handlers):
        access.removeHandler(old)
    access.addHandler(DeferredQueueHandler(records))
    access.propagate = False
    root.setLevel(LEVELS.get(level, logging.INFO))
    for noisy in ("mitmproxy.proxy.server", "mitmproxy.proxy", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _listener.start()


def stop() -> None:
    """Write what is queued and stop the listener (at exit: no line logged before it is lost)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        for handler in _listener.handlers:
            handler.flush()  # the queue is empty now, so this writes out the buffer
        _listener = None
    access = logging.getLogger(ACCESS_LOGGER)
    for handler in list(access.handlers):
        access.removeHandler(handler)
    access.propagate = True


atexit.register(stop)
