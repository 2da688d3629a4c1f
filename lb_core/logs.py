"""Logging set-up: one line per API call is wanted, a write syscall per line is not."""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes into a block buffer, flushed every ``interval_s``, at a warning, and at exit."""

    def __init__(self, stream: TextIO, interval_s: float = 0.5) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self._flushed_at = time.monotonic()
        # A quiet log still reaches the file within interval_s.
        threading.Thread(target=self._flush_forever, name="log-flush", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        now = time.monotonic()
        if record.levelno >= logging.WARNING or now - self._flushed_at >= self.interval_s:
            self._flushed_at = now
            self.flush()


def setup(level: str) -> None:
    try:
        stream: TextIO = open(sys.stderr.fileno(), "w", buffering=1 << 16, closefd=False)  # noqa: SIM115
    except (OSError, ValueError, io.UnsupportedOperation):
        stream = sys.stderr
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    for noisy in ("mitmproxy.proxy.server", "mitmproxy.proxy", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
