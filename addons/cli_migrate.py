"""``bbb-lb migrate --from A.yaml --to B.yaml``: move the whole state to another store (TinyDB <-> Redis).

Each config file names a store (``store:``); everything the LB keeps is copied from the first to the
second and read back. Stop the LBs using the source first: the embedded store refuses a second user.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from lb_core.config import Config
from lb_core.config_sections import StoreConfig
from lb_core.config_types import redacted_url
from lb_core.migrate import MigrationError, copy_state
from lb_core.store import StoreError, make_store


def describe(store: StoreConfig) -> str:
    if store.backend == "redis":
        return f"redis {redacted_url(store.url or '')} (prefix {store.prefix})"
    return f"tinydb {store.path}"


def same_store(a: StoreConfig, b: StoreConfig) -> bool:
    if a.backend != b.backend:
        return False
    if a.backend == "redis":
        return (a.url, a.prefix) == (b.url, b.prefix)
    return a.path == b.path


async def migrate(source_config: Config, target_config: Config, overwrite: bool) -> int:
    source = make_store(source_config)
    target = make_store(target_config)
    opened = []
    try:
        for store, config in ((source, source_config), (target, target_config)):
            try:
                await store.open()
            except StoreError as exc:
                raise MigrationError(f"{config.path}: {exc}") from None
            opened.append(store)
        copied = await copy_state(source, target, overwrite=overwrite)
    finally:
        for store in reversed(opened):
            try:
                await store.close()
            except StoreError as exc:
                print(f"bbb-lb: closing a store: {exc}", file=sys.stderr)
    print(f"copied {describe(source_config.store)} -> {describe(target_config.store)}")
    for line in copied.lines():
        print(line)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from addons.cli import load_config

    source_config = load_config(args.source)
    target_config = load_config(args.target)
    if same_store(source_config.store, target_config.store):
        print(f"bbb-lb: {args.source} and {args.target} name the same store ({describe(source_config.store)})",
              file=sys.stderr)
        return 2
    try:
        return asyncio.run(migrate(source_config, target_config, args.overwrite))
    except (MigrationError, StoreError) as exc:
        print(f"bbb-lb: migrate: {exc}", file=sys.stderr)
        return 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate", help="copy the whole state (meetings, run-time servers and integrations, events, callbacks) "
                        "from the store of one config to the store of another")
    parser.add_argument("--from", dest="source", required=True, help="config whose store is read (stop its LBs first)")
    parser.add_argument("--to", dest="target", required=True, help="config whose store is written (empty, or --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="copy into a store that already holds data (same keys replaced, events appended)")
    parser.set_defaults(handler=cmd_migrate)
