"""File primitives that survive a crash: private modes, whole-line appends, atomic replacement.

Every file is created 0600 and every directory 0700: the store and the captures hold meeting
passwords and secrets. An append never lands after a torn fragment: the file is cut back to the
last line known to be whole first, and again when the append itself fails. ``write_all`` is the one
place every write goes through (tests patch it to inject ENOSPC/EIO).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("bbb_lb.store")

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by the owner only."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        os.chmod(folder, DIR_MODE)  # mkdir's mode is cut by the umask


def open_private(path: str, flags: int) -> int:
    """``os.open`` that creates the file 0600."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until everything is written (the one place tests patch to inject ENOSPC/EIO)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_whole(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename): a crash leaves the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def append_whole(path: str, data: bytes, good_size: int | None) -> int:
    """Append ``data`` after the last whole line and make it durable; return the new size.

    ``good_size`` is where the file is known to end after its last whole write (None: the file's
    size is trusted). Whatever lies beyond it (a torn write) is cut off first; if this write
    fails, the file is cut back again, so a retry never duplicates or follows a fragment.
    """
    fd = open_private(path, os.O_WRONLY | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        start = size if good_size is None else good_size
        if size != start:
            os.ftruncate(fd, start)
        try:
            os.lseek(fd, start, os.SEEK_SET)
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        return start + len(data)
    finally:
        os.close(fd)


def json_line(doc: Any) -> str:
    """One document as a compact JSON line (C encoder, UTF-8 kept as is)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n"


def split_lines(data: bytes, where: str) -> list[dict[str, Any]]:
    """JSON lines back into documents; a torn or garbled line (a crash mid-write) is skipped with a warning."""
    docs: list[dict[str, Any]] = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s: skipped an incomplete line (%d bytes)", where, len(raw))
            continue
        if isinstance(doc, dict):
            docs.append(doc)
        else:
            log.warning("%s: skipped a line that is not a document", where)
    return docs


def reason(exc: BaseException) -> str:
    """What went wrong, for a log line: the OS's words when there are some."""
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc) or type(exc).__name__


@dataclass(slots=True)
class WriteStats:
    """Figures of a store's writes (for /metrics): shared by its table journal and its event files."""

    writes_total: int = 0
    write_seconds_total: float = 0.0
    last_write_seconds: float = 0.0
    write_failures_total: int = 0

    def wrote(self, seconds: float) -> None:
        self.writes_total += 1
        self.write_seconds_total += seconds
        self.last_write_seconds = seconds

    def failed(self) -> None:
        self.write_failures_total += 1

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
