"""A small state registry under /run/kpbench/: what kpbench started, and who owns it.

Every long-lived thing the lab starts (a UML guest, an nginx, a namespace, a temp dir) gets a
JSON record naming its owner process (pid + start time). `cleanup.cleanup_leftovers` removes
things whose owner is gone, so a crashed run is cleaned up by the next one without disturbing
a run that is still alive. Standard library only (the worker imports this inside UML).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.jsonfile import write_json

STATE_DIR = Path(os.environ.get("KPBENCH_STATE_DIR", "/run/kpbench"))


def proc_starttime(pid: int) -> int | None:
    """The process start time (clock ticks since boot, /proc/PID/stat field 22), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int | None, starttime: int | None = None) -> bool:
    """True if process `pid` exists (and, when given, started at `starttime`: no pid reuse)."""
    if not pid:
        return False
    st = proc_starttime(pid)
    if st is None:
        return False
    if _is_zombie(pid):
        return False
    return starttime is None or st == starttime


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :][:1] in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return True


def me() -> dict[str, Any]:
    pid = os.getpid()
    return {"owner_pid": pid, "owner_start": proc_starttime(pid)}


def _path(kind: str, key: str) -> Path:
    safe = str(key).replace("/", "_")
    return STATE_DIR / f"{kind}-{safe}.json"


def register(kind: str, key: str | int, **fields: Any) -> Path:
    """Write the record `kind`/`key` owned by this process (fields: pid, pgid, paths, ...)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    rec = {"kind": kind, "key": str(key), **me(), **fields}
    p = _path(kind, str(key))
    write_json(p, rec, indent=None, default=None)
    return p


def unregister(kind: str, key: str | int) -> None:
    try:
        _path(kind, str(key)).unlink()
    except FileNotFoundError:
        pass


def records(kind: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """All records (of one kind), unreadable ones included as {} so they can be removed."""
    try:
        files = sorted(STATE_DIR.glob("*.json"))
    except FileNotFoundError:
        return
    for p in files:
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            rec = {}
        if kind is None or rec.get("kind") == kind:
            yield p, rec


def owner_alive(rec: dict[str, Any]) -> bool:
    return alive(rec.get("owner_pid"), rec.get("owner_start"))


def lookup(kind: str, key: str | int) -> dict[str, Any] | None:
    try:
        return json.loads(_path(kind, str(key)).read_text())
    except (OSError, ValueError):
        return None
