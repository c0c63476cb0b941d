"""Network namespaces the lab creates: names, creation, commands inside them, removal.

Every namespace the harness makes is named `kpb-<tag>-<role>`, so leftovers of a crashed run are
recognised by the prefix and removed by the next run (or `kpbench clean`).
"""

from __future__ import annotations

import os
import subprocess
from typing import Sequence

PREFIX = "kpb-"
NETNS_DIR = "/run/netns"


class LabError(RuntimeError):
    """Something real in the lab failed; the message says what and what to do."""


def ns_name(tag: str, role: str) -> str:
    return f"{PREFIX}{tag}-{role}"


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    """Create a namespace with loopback up."""
    _ip(["netns", "add", name])
    run(name, ["ip", "link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Kill every process left in the namespace, then remove it (no error if already gone)."""
    for pid in pids(name):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def exec_prefix(name: str) -> list[str]:
    """argv prefix that runs a command inside namespace `name`."""
    return ["ip", "netns", "exec", name]


def run(name: str | None, argv: Sequence[str], *, input: str | bytes | None = None,
        check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run argv inside namespace `name` (None: where we are); raise LabError with stderr on failure."""
    full = (exec_prefix(name) if name else []) + list(argv)
    text = not isinstance(input, bytes)
    p = subprocess.run(full, input=input, capture_output=True, text=text, timeout=timeout)
    if check and p.returncode != 0:
        err = p.stderr if text else p.stderr.decode(errors="replace")
        raise LabError(f"{' '.join(argv[:3])} in {name or 'this namespace'} failed "
                       f"(exit {p.returncode}): {err.strip()[:2000]}")
    return p


def _ip(args: Sequence[str]) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")
