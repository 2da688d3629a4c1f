"""What code this LB runs: the package version and the git commit of its checkout."""

from __future__ import annotations

import functools
from pathlib import Path

from lb_core import __version__

VERSION = __version__


@functools.cache
def revision() -> str:
    """The git commit this code runs from, read from the checkout's files (no subprocess)."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                return ref_file.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
            return ""
        return head
    except OSError:
        return ""
