"""Network namespaces the lab creates: names, creation, commands inside them, removal.

Every namespace the harness makes is named `kpb-<tag>-<role>`, so leftovers of a crashed run are
recognised by the prefix and removed by the next run (or `kpbench clean`).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from harness.errors import UserError
from harness.lab import registry

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

PREFIX = "kpb-"
NETNS_DIR = "/run/netns"


class LabError(UserError, RuntimeError):
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
    registry.register("netns", name, name=name)
    run(name, ["ip", "link", "set", "lo", "up"])


def delete(name: str) -> None:
    """Kill every process left in the namespace, then remove it (no error if already gone)."""
    for pid in pids(name):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    registry.unregister("netns", name)


def pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def exec_prefix(name: str) -> list[str]:
    """argv prefix that runs a command inside namespace `name`."""
    return ["ip", "netns", "exec", name]


def run(
    name: str | None,
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run argv inside namespace `name` (None: where we are); raise LabError with stderr on failure."""
    full = (exec_prefix(name) if name else []) + list(argv)
    text = not isinstance(input, bytes)
    p = subprocess.run(full, input=input, capture_output=True, text=text, timeout=timeout)
    if check and p.returncode != 0:
        err = p.stderr if text else p.stderr.decode(errors="replace")
        raise LabError(
            f"{' '.join(argv[:3])} in {name or 'this namespace'} failed "
            f"(exit {p.returncode}): {err.strip()[:2000]}"
        )
    return p


def _ip(args: Sequence[str]) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def enter(name: str) -> None:
    """Move *this thread* into network namespace `name` (setns(2) is per thread) for good."""
    try:
        fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name} does not exist") from None
    try:
        _setns(fd)
    finally:
        os.close(fd)


def enter_for_good(name: str | None) -> None:
    """ThreadPoolExecutor initializer: the worker thread lives in `name` (None: where it is)."""
    if name is not None:
        enter(name)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with *this thread* in network namespace `name` (None: stay where we are).

    Sockets opened inside keep living in that namespace after the thread comes back, so a
    connection pool filled here can be used from anywhere.
    """
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def call_in(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run fn(*args, **kwargs) in a fresh thread that has entered namespace `name`; return its result.

    A network namespace is per thread: sockets fn creates belong to `name` (and stay there after
    the thread ends), writes to /proc/sys/net/... set `name`'s sysctls. No fork, no exec.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(name)
            box["ok"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["ok"]


def sysctl(name: str, settings: dict[str, str | int]) -> None:
    """Write sysctls (dotted keys, e.g. "net.ipv4.ip_forward") inside namespace `name`."""

    def write() -> None:
        for key, value in settings.items():
            path = "/proc/sys/" + key.replace(".", "/")
            with open(path, "w") as f:
                f.write(str(value))

    try:
        call_in(name, write)
    except OSError as e:
        raise LabError(f"sysctl in {name} failed: {e}") from None
