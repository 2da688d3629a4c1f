"""``bbb-lb recordings list|show|publish|unpublish|delete|import``: the recordings index of a running bbb-lb.

Through the admin listener, like ``bbb-lb servers``. ``import PATH...`` takes archives (files, or every
``*.tar``/``*.tar.gz``/``*.tgz`` of a directory: the shared spool of the NFS model) that the LB host can
read at the same paths, reports each one (imported, replaced, refused and why), removes imported
archives and moves refused ones to ``<dir>/refused/`` with a ``.reason`` file beside them, so nothing is
imported twice and no failure is silent. ``--watch`` keeps importing archives as they appear. Each
import is a job on the LB that the command asks after until it is done, so no archive is too large for
the admin API's request timeout; an import lost to a restart of bbb-lb leaves the archive in place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from addons.cli_admin import AdminClient, CliError, _connection_options, _name, run, table

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# An archive still being written into the spool is left for the next round.
SETTLE_S = 2.0
POLL_MAX_S = 1.0  # the longest between two questions about an import under way
PROGRESS_EVERY_S = 10.0


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M") if ms else "-"


def recordings_list(args: argparse.Namespace, client: AdminClient) -> None:
    query = f"?limit={args.limit}"
    for key in ("state", "integration", "meeting"):
        value = getattr(args, key)
        if value:
            query += f"&{key}={_name(value)}"
    found = client.call("GET", "/api/recordings" + query)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    rows = [[r["record_id"], r["integration"], r["meeting_id"], r["state"], _when(r["start_time"]),
             r["server"] or "-", ",".join(r["stored_formats"]) or "-", "yes" if r["pending"] else ""]
            for r in found]
    print(table(rows, ["RECORD", "INTEGRATION", "MEETING", "STATE", "STARTED (UTC)", "SERVER", "STORED", "PENDING"]))


def recordings_show(args: argparse.Namespace, client: AdminClient) -> None:
    print(json.dumps(client.call("GET", f"/api/recordings/{_name(args.record_id)}"), indent=2))


def recordings_change(args: argparse.Namespace, client: AdminClient) -> None:
    for record_id in args.record_ids:
        result = client.call("POST", f"/api/recordings/{_name(record_id)}/{args.change}")
        print(f"{record_id}: {result['state']}")


def archives_in(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise CliError(f"{raw}: no such file or directory")
    return found


def wait_for_import(client: AdminClient, archive: Path) -> dict[str, Any]:
    """Start the import as a job on the LB and ask after it until it is done: an archive of any size
    imports, whatever the admin API's timeout; a line every ``PROGRESS_EVERY_S`` says it is still going."""
    job = client.call("POST", "/api/recordings/imports", {"path": str(archive.resolve())})
    delay, told_at = 0.05, time.monotonic()
    while job.get("state") != "done":
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX_S)
        job = client.call("GET", f"/api/recordings/imports/{_name(job['job'])}")
        if job.get("state") != "done" and time.monotonic() - told_at >= PROGRESS_EVERY_S:
            told_at = time.monotonic()
            print(f"{archive}: importing ({job.get('elapsed_s', 0):.0f} s, "
                  f"{int(job.get('bytes', 0)) / 1e6:.1f} MB)", flush=True)
    return dict(job.get("result") or {"result": "refused", "reason": "the import ended without a result"})


def import_one(client: AdminClient, archive: Path, keep: bool) -> dict[str, Any]:
    outcome = wait_for_import(client, archive)
    result = outcome.get("result", "refused")
    if result == "refused":
        print(f"{archive}: refused: {outcome.get('reason', '')}", flush=True)
        if not keep:
            refused = archive.parent / "refused"
            refused.mkdir(exist_ok=True)
            os.replace(archive, refused / archive.name)
            (refused / (archive.name + ".reason")).write_text(str(outcome.get("reason", "")) + "\n", encoding="utf-8")
    else:
        detail = " (it was there already: the stored copy is replaced)" if result == "replaced" else ""
        print(f"{archive}: {result} recording {outcome.get('record_id')}{detail}", flush=True)
        if not keep:
            with contextlib.suppress(OSError):
                archive.unlink()
    return outcome


def recordings_import(args: argparse.Namespace, client: AdminClient) -> None:
    failures = 0
    while True:
        now = time.time()
        for archive in archives_in(args.paths):
            if args.watch and now - archive.stat().st_mtime < SETTLE_S:
                continue  # still arriving
            if import_one(client, archive, args.keep).get("result") == "refused":
                failures += 1
        if not args.watch:
            break
        time.sleep(args.interval)
    if failures:
        raise CliError(f"{failures} archive(s) refused")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _connection_options()
    recordings = subparsers.add_parser("recordings", help="the recordings index: list, change, import")
    actions = recordings.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", parents=[common], help="recordings, newest first")
    p.add_argument("--state", choices=["processing", "processed", "published", "unpublished", "deleted"])
    p.add_argument("--integration")
    p.add_argument("--meeting", help="a meetingID")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(action_handler=recordings_list)
    p = actions.add_parser("show", parents=[common], help="one recording, everything the index holds")
    p.add_argument("record_id")
    p.set_defaults(action_handler=recordings_show)
    for change in ("publish", "unpublish", "delete"):
        p = actions.add_parser(change, parents=[common], help=f"{change} recordings (their origin server is told)")
        p.add_argument("record_ids", nargs="+", metavar="RECORD_ID")
        p.set_defaults(action_handler=recordings_change, change=change)
    p = actions.add_parser("import", parents=[common], help="import archives from files or spool directories")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--watch", action="store_true", help="keep importing archives as they appear")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between looks in --watch mode")
    p.add_argument("--keep", action="store_true", help="leave archives where they are after importing")
    p.set_defaults(action_handler=recordings_import)
    for parser in (recordings, *actions.choices.values()):
        parser.set_defaults(handler=run)

