"""Save the API traffic in mitmproxy's flow format, bounded in size, without disk I/O in the hooks.

Replaces mitmproxy's Save addon for bbb-lb: the hook only snapshots the flow (``get_state``) into a
bounded queue; a background task writes batches in a thread, rotates FILE → FILE.1 … FILE.K when
FILE exceeds the size bound, and flushes on shutdown. The saved copy keeps only our own metadata
(never another addon's, which could hold anything) and can have meeting passwords masked.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

from mitmproxy import ctx, exceptions, http, io

from lb_core.capture import mask_query, mask_url, mask_xml
from lb_core.durable_files import FILE_MODE, make_private_dir, open_private

log = logging.getLogger("bbb_lb.capture")

QUEUE_SIZE = 10_000  # flows waiting for the disk; beyond this they are dropped, never the proxy slowed
BATCH = 512
SAVED_METADATA = frozenset({"bbb", "bbb_local", "bbb_backend_of"})  # what Annotate/BbbLoadBalancer put there
_STOP = object()


class _Snapshot:
    """A flow's state taken in the hook; FlowWriter only needs ``get_state``."""

    __slots__ = ("state",)

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def get_state(self) -> dict[str, Any]:
        return self.state


class Sink:
    """The file side; only ever used from one thread at a time."""

    def __init__(self, path: str, max_bytes: int, keep: int, mask: bool) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.mask = mask
        self.fo: BinaryIO | None = None
        self.writer: io.FlowWriter | None = None

    def open(self) -> None:
        make_private_dir(self.path.parent)  # captures hold passwords and secrets: owner only
        if self.path.exists() and self.path.stat().st_size > 0:
            self.rotate()  # never overwrite an earlier capture
        fd = open_private(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.fchmod(fd, FILE_MODE)  # a file that existed keeps its mode otherwise
        self.fo = os.fdopen(fd, "wb")
        self.writer = io.FlowWriter(self.fo)

    def write(self, states: list[dict[str, Any]]) -> None:
        for state in states:
            if self.fo is not None and self.fo.tell() >= self.max_bytes:
                self.fo.close()  # rotate before writing, so FILE always holds the newest flows
                self.fo = self.writer = None
                self.rotate()
            if self.writer is None:
                self.open()
            assert self.writer is not None
            self.writer.add(_Snapshot(clean(state, self.mask)))  # type: ignore[arg-type]
        if self.fo is not None:
            self.fo.flush()

    def rotate(self) -> None:
        """FILE → FILE.1 → … → FILE.K; the oldest is dropped."""
        if self.keep <= 0:
            self.path.unlink(missing_ok=True)
            return
        Path(f"{self.path}.{self.keep}").unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            older = Path(f"{self.path}.{i}")
            if older.exists():
                older.rename(f"{self.path}.{i + 1}")
        if self.path.exists():
            self.path.rename(f"{self.path}.1")

    def close(self) -> None:
        if self.fo is not None:
            try:
                self.fo.flush()
                os.fsync(self.fo.fileno())
            except OSError as exc:
                log.error("could not flush %s: %s", self.path, exc)
            finally:
                self.fo.close()
        self.fo = self.writer = None


def clean(state: dict[str, Any], mask: bool) -> dict[str, Any]:
    """The state as saved: foreign metadata dropped, passwords masked when asked."""
    state["metadata"] = {k: v for k, v in state.get("metadata", {}).items() if k in SAVED_METADATA}
    request = state.get("request")
    if request and request.get("headers"):
        # A recording upload's bearer token is a credential, whatever the masking mode.
        request["headers"] = tuple((k, b"***") if k.lower() == b"authorization" else (k, v)
                                   for k, v in request["headers"])
    if mask:
        mask_state(state)
    return state


def _header(headers: Any, name: bytes) -> bytes | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return None


def mask_state(state: dict[str, Any]) -> None:
    """Meeting passwords replaced in the query, a form body, the join Location, XML answers and metadata."""
    request = state.get("request")
    if request:
        path = request["path"].decode("utf-8", "surrogateescape")
        request["path"] = mask_url(path).encode("utf-8", "surrogateescape")
        content_type = (_header(request.get("headers"), b"content-type") or b"").split(b";")[0].strip().lower()
        if request.get("content") and content_type == b"application/x-www-form-urlencoded":
            text = request["content"].decode("utf-8", "surrogateescape")
            request["content"] = mask_query(text).encode("utf-8", "surrogateescape")
    response = state.get("response")
    if response:
        response["headers"] = tuple(
            (k, mask_url(v.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape"))
            if k.lower() == b"location" else (k, v) for k, v in response.get("headers") or ())
        if response.get("content") and _header(response["headers"], b"content-encoding") is None:
            response["content"] = mask_xml(response["content"])
    bbb = state["metadata"].get("bbb")
    if isinstance(bbb, dict):
        for entry in bbb.get("backend") or ():
            if isinstance(entry, dict) and entry.get("url"):
                entry["url"] = mask_url(entry["url"])


def parse_max_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise exceptions.OptionsError(f"bbb_save_max_mb must be a number of MB, not {text!r}") from None
    if value <= 0:
        raise exceptions.OptionsError("bbb_save_max_mb must be more than 0")
    return value


class Capture:
    """The ``bbb_save_*`` options and the writer task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.sink: Sink | None = None
        self.dropped = 0
        self._running = False
        self._retired: list[asyncio.Task[None]] = []

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("bbb_save_file", str, "", "Save flows to this file (mitmproxy format), rotated by size.")
        loader.add_option("bbb_save_max_mb", str, "100", "Rotate the save file when it exceeds this many MB.")
        loader.add_option("bbb_save_keep", int, 5, "Rotated save files to keep (FILE.1 ... FILE.K).")
        loader.add_option("bbb_mask_passwords", bool, False,
                          "Replace meeting passwords with *** in saved flows (not in the live traffic).")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"bbb_save_file", "bbb_save_max_mb", "bbb_save_keep", "bbb_mask_passwords"}:
            return
        max_mb = parse_max_mb(ctx.options.bbb_save_max_mb)
        if ctx.options.bbb_save_keep < 0:
            raise exceptions.OptionsError("bbb_save_keep must be 0 or more")
        path = ctx.options.bbb_save_file
        if self.sink is not None and path and str(self.sink.path) == path:
            # Same file: new limits apply from the next batch (read there, in the writer thread).
            self.sink.max_bytes = int(max_mb * 1024 * 1024)
            self.sink.keep = ctx.options.bbb_save_keep
            self.sink.mask = ctx.options.bbb_mask_passwords
            return
        new_sink = Sink(path, int(max_mb * 1024 * 1024), ctx.options.bbb_save_keep,
                        ctx.options.bbb_mask_passwords) if path else None
        if self._running:
            self._switch(new_sink)
        else:
            self.sink = new_sink

    def running(self) -> None:
        self._running = True
        if self.sink is not None:
            self._start(self.sink)

    def _start(self, sink: Sink) -> None:
        self.sink = sink
        self.queue = asyncio.Queue(QUEUE_SIZE)
        self.task = asyncio.get_running_loop().create_task(self._write_loop(self.queue, sink))

    def _switch(self, sink: Sink | None) -> None:
        """The file changed while running: finish the old writer in the background, start anew."""
        if self.queue is not None and self.task is not None:
            self._retired.append(asyncio.get_running_loop().create_task(self._retire(self.queue, self.task)))
        self.queue = self.task = None
        self.sink = None
        if sink is not None:
            self._start(sink)

    @staticmethod
    async def _retire(queue: asyncio.Queue[Any], task: asyncio.Task[None]) -> None:
        await queue.put(_STOP)
        await task

    def response(self, flow: http.HTTPFlow) -> None:
        if self.queue is not None and flow.websocket is None:
            self._enqueue(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.queue is not None and flow.response is None:
            self._enqueue(flow)

    def _enqueue(self, flow: http.HTTPFlow) -> None:
        assert self.queue is not None
        try:
            self.queue.put_nowait(flow.get_state())
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8 ...: say so without flooding the log
                log.warning("capture cannot keep up with the traffic: %d flows not saved so far", self.dropped)

    async def _write_loop(self, queue: asyncio.Queue[Any], sink: Sink) -> None:
        stop = False
        try:
            while not stop:
                batch = [await queue.get()]
                while len(batch) < BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                states = [s for s in batch if s is not _STOP]
                stop = len(states) < len(batch)
                if states:
                    await asyncio.to_thread(sink.write, states)
        except OSError as exc:
            log.error("saving flows to %s failed, capture stopped: %s", sink.path, exc)
            if self.queue is queue:
                self.queue = None
        finally:
            await asyncio.to_thread(sink.close)

    async def done(self) -> None:
        queue, task = self.queue, self.task
        self.queue = None
        if queue is not None and task is not None:
            await queue.put(_STOP)
            await task
        for retired in self._retired:
            await retired
        self._retired.clear()
        if self.dropped:
            log.warning("capture: %d flows were not saved (the disk could not keep up)", self.dropped)
