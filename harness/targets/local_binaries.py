"""Where the local target's upstream binaries are: etcd, kube-apiserver and kube-proxy built by
`make kube` (kube/build.sh, into ~/.cache/kpbench/kube/<version>/bin) or KUBE_BIN_DIR."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.targets.local_procs import LocalClusterError

REPO = Path(__file__).resolve().parents[2]
KUBE_DIR = REPO / "kube"


def kube_version() -> str:
    """$KUBE_VERSION if set (as `make kube KUBE_VERSION=...` builds it), else the
    k8s.io/kubernetes version pinned in kube/go.mod (e.g. "v1.34.12")."""
    env = os.environ.get("KUBE_VERSION", "").strip()
    if env:
        return env if env.startswith("v") else f"v{env}"
    return pinned_kube_version()


def pinned_kube_version() -> str:
    try:
        text = (KUBE_DIR / "go.mod").read_text()
    except OSError as e:
        raise LocalClusterError(f"cannot read {KUBE_DIR / 'go.mod'}: {e}") from None
    m = re.search(r"^\s*k8s\.io/kubernetes\s+(v\S+)", text, re.M)
    if not m:
        raise LocalClusterError("kube/go.mod does not require k8s.io/kubernetes")
    return m.group(1)


CACHE_ROOT = Path(os.environ.get("KPBENCH_CACHE")
                  or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kpbench")


def default_bin_dir() -> Path:
    """Where `make kube` puts the binaries: outside the work tree, so fresh clones reuse them."""
    return CACHE_ROOT / "kube" / kube_version() / "bin"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_proxy: Path

    def version(self, which: str) -> str:
        exe = {"etcd": self.etcd, "kube-apiserver": self.kube_apiserver, "kube-proxy": self.kube_proxy}[which]
        p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else ""


def find_binaries(bin_dir: str | Path | None = None) -> Binaries:
    """Locate etcd, kube-apiserver and kube-proxy.

    Order: `bin_dir`, then $KUBE_BIN_DIR, then the `make kube` cache. etcd may also come from
    $KUBE_ETCD or PATH (e.g. Debian's etcd-server) when none of those has it.
    """
    dirs = [Path(d) for d in (bin_dir, os.environ.get("KUBE_BIN_DIR")) if d]
    dirs.append(default_bin_dir())

    def pick(name: str) -> Path | None:
        for d in dirs:
            p = d / name
            if p.is_file() and os.access(p, os.X_OK):
                return p
        return None

    api, proxy = pick("kube-apiserver"), pick("kube-proxy")
    etcd = Path(os.environ["KUBE_ETCD"]) if os.environ.get("KUBE_ETCD") else pick("etcd")
    if etcd is None and shutil.which("etcd"):
        etcd = Path(shutil.which("etcd"))  # type: ignore[arg-type]
    missing = [n for n, p in (("etcd", etcd), ("kube-apiserver", api), ("kube-proxy", proxy)) if p is None]
    if missing:
        built = sorted(p.parent.parent.name for p in (CACHE_ROOT / "kube").glob("v*/bin/kube-apiserver"))
        hint = f" (built here: {', '.join(built)}; select one with KUBE_VERSION)" if built else ""
        raise LocalClusterError(
            f"{', '.join(missing)} not found in {', '.join(str(d) for d in dirs)}: run `make kube` "
            f"(kube/build.sh) or point KUBE_BIN_DIR at official release binaries{hint}")
    return Binaries(etcd=etcd, kube_apiserver=api, kube_proxy=proxy)  # type: ignore[arg-type]
