"""One atomic JSON write for every file the harness keeps (points, metadata, registry, caches).

Standard library only: the worker imports it inside a UML guest, and it sits on the ground floor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(
    path: str | Path,
    data: Any,
    *,
    indent: int | None = 1,
    default: Any = str,
    newline: bool = False,
    fsync: bool = False,
) -> Path:
    """Write `data` as JSON to `path` through a temp file and a rename, so a reader (or a run
    killed mid-write) only ever sees the previous file or the new one, whole. The temp name
    carries the pid, so processes writing the same file do not trip over each other.
    `fsync`: the data is on disk before the rename (the restore file must survive a crash)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=indent, default=default) + ("\n" if newline else "")
    with open(tmp, "w") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
