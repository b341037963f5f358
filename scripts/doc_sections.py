"""Rewrite one marked section of a Markdown file (the results scripts' ``--update``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from moec.ir.files import atomic_write


def update_section(path: str | Path, begin: str, end: str, text: str) -> int:
    """Replace what lies between ``begin`` and ``end`` in ``path`` by ``text`` (atomically);
    0, or 2 with a one-line message when the file has no such section."""
    path = Path(path)
    doc = path.read_text()
    if begin not in doc or end not in doc:
        print(f"{path}: no {begin} ... {end} section", file=sys.stderr)
        return 2
    new = re.sub(
        re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}{end}", doc,
        flags=re.S,
    )  # fmt: skip
    atomic_write(str(path), new.encode())
    print(f"updated {path}")
    return 0
