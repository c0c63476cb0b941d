"""The Debian root filesystem the kube-proxy and harness images share, built by mmdebstrap from the
Debian mirror apt already uses, and commands run inside an unpacked rootfs with chroot.

One base for both images: each node's containerd stores and unpacks the shared layer once, and the
base is built once (about a minute) instead of twice. It holds what either image needs from Debian:
kube-proxy's iptables, nftables, ipset, conntrack, iproute2 and kmod, and the harness's python3,
ipvsadm and procps (./Dockerfile's list). Documentation, manual pages and translations are left out
as in Debian's slim images.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.errors import UserError

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# the list is part of the base's cache key (debian.recipe)
PACKAGES = (
    "ca-certificates",
    "conntrack",
    "ipset",
    "iproute2",
    "iptables",
    "ipvsadm",
    "kmod",
    "nftables",
    "procps",
    "python3",
)
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)


def recipe() -> dict[str, object]:
    """What the base's content depends on (its cache key)."""
    return {"suite": SUITE, "variant": VARIANT, "packages": list(PACKAGES), "dpkg": list(DPKG_EXCLUDES)}


def mmdebstrap_argv(rootfs: Path) -> list[str]:
    """The mmdebstrap command that fills the empty directory `rootfs`."""
    argv = ["mmdebstrap", "--mode=root", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}"]
    argv += [f"--dpkgopt={o}" for o in DPKG_EXCLUDES]
    # mmdebstrap copies the host's resolv.conf and hostname in: an image carries neither
    argv += ['--customize-hook=: > "$1/etc/resolv.conf"; : > "$1/etc/hostname"']
    return [*argv, SUITE, str(rootfs), MIRROR]


def build_base(rootfs: Path) -> None:
    """Fill `rootfs` (empty) with the Debian base; the log tail on failure."""
    if not shutil.which("mmdebstrap"):
        raise UserError(
            "mmdebstrap is not installed: run `make cluster-images` (installs Debian's mmdebstrap)"
        )
    p = subprocess.run(mmdebstrap_argv(rootfs), capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise UserError(f"mmdebstrap could not build the Debian base (is {MIRROR} reachable?):\n{tail}")


def chroot(rootfs: Path, *argv: str) -> None:
    """Run a command inside an unpacked rootfs (no mounts: only file operations run there)."""
    p = subprocess.run(
        ["chroot", str(rootfs), *argv],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
    )
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"chroot {rootfs} {' '.join(argv)} failed:\n{tail}")


def remove_tree(path: Path) -> None:
    """rm -rf that never reaches into a mounted file system: mmdebstrap killed mid-run (Ctrl-C
    kills it 0.25 s after SIGINT) leaves /proc, /sys and /dev mounted in its rootfs, and those are
    unmounted first (deepest first, lazily), then `rm --one-file-system` stays on the cache's."""
    if not path.exists():
        return
    prefix = f"{path.resolve()}/"
    mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)
