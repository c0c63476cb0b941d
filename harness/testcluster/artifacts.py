"""Where the test cluster's binaries are: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet and kube-proxy of one Kubernetes release (kube/build.sh --cluster, into
~/.cache/kpbench/kube/<release>/bin), containerd v2 (kube/build_containerd.sh, into
~/.cache/kpbench/containerd/<version>/bin), and Debian's runc and CNI plugins. `make cluster-bins`
builds and installs them all; a missing one is a one-line UserError naming it and that command.
KUBE_BIN_DIR (the local target's official release binaries) plays no part: one cache, one release."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from harness.errors import UserError
from harness.targets import local_binaries

RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")
# the CNI plugins the nodes' network configuration chains (Debian's containernetworking-plugins)
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
BUILD_CONTAINERD = local_binaries.KUBE_DIR / "build_containerd.sh"


@dataclass(frozen=True)
class ClusterBinaries:
    """Paths of every executable a test cluster runs (runc and the CNI plugins are Debian's)."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim: Path
    ctr: Path
    runc: Path = RUNC
    cni_bin_dir: Path = CNI_BIN_DIR


def containerd_version() -> str:
    """$CONTAINERD_VERSION if set (as `make cluster-bins CONTAINERD_VERSION=...` builds it), else
    kube/build_containerd.sh's default (e.g. "v2.4.2")."""
    env = os.environ.get("CONTAINERD_VERSION", "").strip()
    if env:
        return env if env.startswith("v") else f"v{env}"
    try:
        m = re.search(r"^default_version=(v\S+)$", BUILD_CONTAINERD.read_text(), re.M)
    except OSError as e:
        raise UserError(f"cannot read {BUILD_CONTAINERD}: {e}") from None
    if not m:
        raise UserError(f"{BUILD_CONTAINERD} sets no default_version")
    return m.group(1)


def containerd_dir(version: str) -> Path:
    """Where kube/build_containerd.sh puts containerd `version`'s binaries."""
    return local_binaries.CACHE_ROOT / "containerd" / version / "bin"


def cluster_binaries(kube_version: str) -> ClusterBinaries:
    """Every binary of a test cluster of Kubernetes `kube_version`; UserError (one line, naming the
    missing files and the make command that provides them) when any is missing."""
    kube = local_binaries.cache_dir(kube_version)
    ctrd_version = containerd_version()
    ctrd = containerd_dir(ctrd_version)
    found = ClusterBinaries(
        etcd=kube / "etcd",
        kube_apiserver=kube / "kube-apiserver",
        kube_controller_manager=kube / "kube-controller-manager",
        kube_scheduler=kube / "kube-scheduler",
        kubelet=kube / "kubelet",
        kube_proxy=kube / "kube-proxy",
        containerd=ctrd / "containerd",
        containerd_shim=ctrd / "containerd-shim-runc-v2",
        ctr=ctrd / "ctr",
        runc=RUNC,
        cni_bin_dir=CNI_BIN_DIR,
    )
    wanted = [getattr(found, f.name) for f in fields(found) if f.name != "cni_bin_dir"]
    missing = [p for p in (*wanted, *(CNI_BIN_DIR / n for n in CNI_PLUGINS)) if not _executable(p)]
    if missing:
        built = ", ".join(local_binaries.built_releases()) or "none"
        make = f"make cluster-bins KUBE_VERSION={kube_version}"
        if os.environ.get("CONTAINERD_VERSION"):
            make += f" CONTAINERD_VERSION={ctrd_version}"
        raise UserError(
            f"the test cluster of Kubernetes {kube_version} lacks {', '.join(map(str, missing))}: "
            f"run `{make}` (Kubernetes releases built here: {built})"
        )
    return found


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
