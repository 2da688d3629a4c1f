"""The store interface stands alone: a backend (Redis) imports it without the embedded store's TinyDB."""

from __future__ import annotations

import subprocess
import sys


def test_the_store_interface_imports_no_backend() -> None:
    code = ("import sys\n"
            "from lb_core.store import Doc, Store, StoreError, StoreLocked\n"
            "loaded = sorted(m for m in sys.modules if m == 'tinydb' or m.startswith(('tinydb.', 'lb_core.store_')))\n"
            "print(','.join(loaded))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""
