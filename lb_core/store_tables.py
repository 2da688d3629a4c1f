"""The embedded store's tables in memory: committed documents under an overlay of uncommitted changes.

A change is visible to readers as soon as it is made (the overlay), but enters the committed tables
only once the journal has it on disk; a failed write drops it from the overlay and leaves nothing
of it behind. The snapshot written to the TinyDB file holds committed documents only, each under a
document id that stays the same for its key.
"""

from __future__ import annotations

from collections.abc import Iterable

from lb_core.store import Doc
from lb_core.store_journal import Change


class Tables:
    """Committed documents per table, the changes not yet durable, and stable TinyDB document ids."""

    def __init__(self) -> None:
        self._committed: dict[str, dict[str, Doc]] = {}  # on disk
        self._uncommitted: dict[tuple[str, str], list[Doc | None]] = {}  # made, not yet on disk, in order
        self._ids: dict[str, dict[str, int]] = {}
        self._next_id: dict[str, int] = {}

    def load(self, table: str, documents: Iterable[tuple[str, int, Doc]]) -> None:
        """A table as the TinyDB file holds it: (key, document id, document)."""
        docs: dict[str, Doc] = {}
        ids: dict[str, int] = {}
        for key, doc_id, doc in documents:
            docs[key] = doc
            ids[key] = doc_id
        self._committed[table] = docs
        self._ids[table] = ids
        self._next_id[table] = max(ids.values(), default=0) + 1

    def get(self, table: str, key: str) -> Doc | None:
        if self._uncommitted:
            pending = self._uncommitted.get((table, key))
            if pending:
                return pending[-1]
        return self._committed.get(table, {}).get(key)

    def all(self, table: str) -> dict[str, Doc]:
        docs = dict(self._committed.get(table, {}))
        for (name, key), pending in self._uncommitted.items():
            if name == table:
                if pending[-1] is None:
                    docs.pop(key, None)
                else:
                    docs[key] = pending[-1]
        return docs

    def names(self) -> list[str]:
        """The tables holding at least one document (for ``bbb-lb migrate``)."""
        names = set(self._committed) | {name for name, _ in self._uncommitted}
        return sorted(name for name in names if self.all(name))

    def stage(self, table: str, key: str, doc: Doc | None) -> None:
        """A change made, visible to readers, not durable yet."""
        self._uncommitted.setdefault((table, key), []).append(doc)

    def commit(self, table: str, key: str, doc: Doc | None) -> None:
        if doc is None:
            self._committed.get(table, {}).pop(key, None)
        else:
            self._committed.setdefault(table, {})[key] = doc

    def settle(self, changes: list[Change], committed: bool) -> None:
        """Changes leave the uncommitted overlay; into the tables if their write succeeded."""
        for table, key, doc in changes:
            pending = self._uncommitted.get((table, key))
            if pending:
                pending.pop(0)
                if not pending:
                    del self._uncommitted[(table, key)]
            if committed:
                self.commit(table, key, doc)

    def snapshot(self) -> dict[str, dict[str, Doc]]:
        """The TinyDB file contents (committed changes only): document ids kept stable per key."""
        data: dict[str, dict[str, Doc]] = {}
        for name, docs in self._committed.items():
            ids = self._ids.setdefault(name, {})
            for gone in set(ids) - set(docs):
                del ids[gone]
            table: dict[str, Doc] = {}
            for key, doc in docs.items():
                doc_id = ids.get(key)
                if doc_id is None:
                    doc_id = ids[key] = self._next_id.get(name, 1)
                    self._next_id[name] = doc_id + 1
                table[str(doc_id)] = {**doc, "_key": key}
            data[name] = table
        return data
