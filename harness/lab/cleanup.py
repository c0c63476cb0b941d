"""Remove what crashed kpbench runs left behind: namespaces, UML guests, nginx, temp dirs.

Safe at any time and idempotent: something is removed only if the process that made it is gone
(registry record with a dead owner), or if nothing claims it (a `kpb-` namespace without a
record, a kpbench temp dir whose creating pid is dead). force=True also removes what live
kpbench processes own (for `kpbench clean --force`).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import time
from collections.abc import Callable

from harness.lab import netns, registry
from harness.lab.topology import delete_namespaces

TMP_GLOBS = ("/tmp/kpbench-uml-*", "/dev/shm/kpbench-uml-*", "/tmp/kpbench-nginx-*", "/tmp/kpbench-caps-*")
_PID_IN_NAME = re.compile(r"^kpbench-[a-z]+-(\d+)-")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_group(pgid: int, pid: int, start: int | None, expect: str) -> bool:
    """SIGKILL process group `pgid` if its leader is still the process we started (or gone but
    group members remain). Returns True if something was signalled."""
    leader_ok = registry.alive(pid, start) and expect in _cmdline(pid)
    members = [p for p in _group_members(pgid) if expect in _cmdline(p)]
    if not leader_ok and not members:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    for _ in range(100):
        if not _group_members(pgid):
            break
        time.sleep(0.02)
    return True


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read()
            rest = data[data.rindex(b")") + 2 :].split()
            if int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
                out.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return out


def cleanup_leftovers(log: Callable[[str], None] | None = print, *, force: bool = False) -> list[str]:
    """Remove leftovers of dead kpbench runs; log (and return) one line per thing removed."""
    say = log or (lambda s: None)
    done: list[str] = []

    def note(msg: str) -> None:
        done.append(msg)
        say(msg)

    def stale(rec: dict) -> bool:
        return force or not registry.owner_alive(rec)

    # 1. processes: UML guests (whole process group), then nginx
    # a guest's command line carries umid=kpb... whatever the kernel binary is called
    for kind, expect in (("uml", "umid=kpb"), ("nginx", "nginx")):
        for path, rec in registry.records(kind):
            if not stale(rec):
                continue
            pid = rec.get("pid")
            if pid and _kill_group(rec.get("pgid", pid), pid, rec.get("start"), expect):
                note(f"killed {kind} pid {pid}" + (f" (pod {rec['pod']})" if rec.get("pod") else ""))
            for p in rec.get("paths", []):
                if os.path.exists(p):
                    shutil.rmtree(p, ignore_errors=True)
                    note(f"removed {p}")
            _unlink(path)

    # guests whose record is gone (a registry wiped, a crash mid-start): their uml_dir names the
    # harness process that started them (kpbench-uml-<pid>-...); kill those whose owner is dead
    for pid in _orphan_guests(force):
        try:
            pgid = os.getpgid(pid)
            os.killpg(pgid, signal.SIGKILL)
            note(f"killed orphaned UML guest pid {pid}")
        except ProcessLookupError:
            pass

    # 2. namespaces: those of dead owners and those nobody claims
    claimed = {}
    for path, rec in registry.records("netns"):
        claimed[rec.get("name") or rec.get("key")] = (path, rec)
    doomed = []
    for name in netns.list_namespaces():
        entry = claimed.get(name)
        if entry is None or stale(entry[1]):
            doomed.append(name)
    for name, pids in _pids(doomed).items():
        for pid in pids:
            note(f"killed pid {pid} ({_cmdline(pid)[:60].strip()}) in namespace {name}")
    for name in delete_namespaces(doomed):
        note(f"removed namespace {name}")
    for ns_name, (path, rec) in claimed.items():
        if ns_name not in netns.list_namespaces() and (stale(rec) or ns_name in doomed):
            _unlink(path)

    # 3. other records (labs, temp dirs) of dead owners; then unclaimed temp dirs
    for path, rec in registry.records():
        if rec.get("kind") in ("uml", "nginx", "netns"):
            continue
        if not rec or stale(rec):
            for p in rec.get("paths", []):
                if os.path.exists(p):
                    shutil.rmtree(p, ignore_errors=True)
                    note(f"removed {p}")
            _unlink(path)
    for pattern in TMP_GLOBS:
        for p in glob.glob(pattern):
            m = _PID_IN_NAME.match(os.path.basename(p))
            if m and (force or not registry.alive(int(m.group(1)))):
                shutil.rmtree(p, ignore_errors=True)
                note(f"removed {p}")
    return done


_UML_DIR = re.compile(r"uml_dir=\S*kpbench-uml-(\d+)-")


def _orphan_guests(force: bool) -> list[int]:
    """Leaders of kpbench UML process groups whose starting harness process is gone."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cmd = _cmdline(int(d))
        if "umid=kpb" not in cmd:
            continue
        m = _UML_DIR.search(cmd)
        if m and (force or not registry.alive(int(m.group(1)))):
            try:
                if os.getpgid(int(d)) == int(d):
                    out.append(int(d))
            except ProcessLookupError:
                pass
    return out


def _pids(names: list[str]) -> dict[str, list[int]]:
    from harness.lab.topology import namespace_pids

    return namespace_pids(names)


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness.lab.cleanup")
    ap.add_argument("--force", action="store_true", help="also remove what live kpbench processes own")
    a = ap.parse_args()
    n = len(cleanup_leftovers(force=a.force))
    print(f"{n} leftover(s) removed" if n else "nothing to clean")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
