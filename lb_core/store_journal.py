"""The write-ahead journal of the embedded store: table changes as JSON lines, one fsync per batch.

A batch of changes (whatever the number of meetings) is one append and one fsync. A line torn by a
crash is skipped when the journal is replayed; an append never lands after one (the file is cut
back to the last whole line first). Journals are numbered: when the store folds them into its
TinyDB file, new changes go to the next one, so commits never wait for a compaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from lb_core.durable_files import append_whole, json_line, split_lines
from lb_core.store import Doc

log = logging.getLogger("bbb_lb.store")

Change = tuple[str, str, Doc | None]  # table, key, the document (None: deleted)


class Journal:
    """The journal files next to a store file: appended in batches, replayed at start, rotated to compact."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.index = 1
        self.bytes = 0  # written to the current journal
        self.good: int | None = 0  # where the current journal ends after its last whole write

    @property
    def path(self) -> str:
        """The journal new changes go to; older ones wait to be folded into the TinyDB file."""
        return f"{self.store_path}.journal.{self.index:06d}"

    def files(self) -> list[Path]:
        folder, name = Path(self.store_path).parent, Path(self.store_path).name
        return sorted(folder.glob(name + ".journal*"))

    @staticmethod
    def encode(changes: Iterable[Change]) -> bytes:
        return "".join(json_line({"t": t, "k": k, "d": d}) for t, k, d in changes).encode("utf-8")

    def append(self, data: bytes) -> None:
        """Append a batch and fsync it (on the writer thread); nothing of it stays when this raises."""
        self.good = append_whole(self.path, data, self.good)
        self.bytes += len(data)

    def rotate(self) -> list[Path]:
        """New changes go to a fresh journal; return the ones a snapshot taken now makes redundant."""
        done_with = [p for p in self.files() if str(p) <= self.path]
        self.index += 1
        self.bytes = 0
        self.good = 0
        return done_with

    @staticmethod
    def replay(journals: Iterable[Path]) -> Iterator[Change]:
        """The changes the journals hold, in order; a torn line (a crash mid-write) is skipped."""
        for journal in journals:
            for change in split_lines(journal.read_bytes(), str(journal)):
                table, key = change.get("t"), change.get("k")
                if not isinstance(table, str) or not isinstance(key, str):
                    log.warning("%s: skipped a line that is not a change", journal)
                    continue
                yield table, key, change.get("d")

    @staticmethod
    def remove(journals: Iterable[Path]) -> None:
        for journal in journals:
            journal.unlink(missing_ok=True)
