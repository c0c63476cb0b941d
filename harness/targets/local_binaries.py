"""Where the local target's upstream binaries are: etcd, kube-apiserver and kube-proxy built by
`make kube` (kube/build.sh, into ~/.cache/kpbench/kube/<version>/bin) or KUBE_BIN_DIR, and the
binaries of exactly one release (`binaries_for`), never another release's.

`make kube KUBE_VERSION=vX.Y.Z` builds each release into its own folder; KUBE_BIN_DIR may point at
official release binaries, whose kube-proxy must then report the requested release."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import releases as versions
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


CACHE_ROOT = Path(
    os.environ.get("KPBENCH_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kpbench"
)


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
        built = built_releases()
        hint = f" (built here: {', '.join(built)}; select one with KUBE_VERSION)" if built else ""
        raise LocalClusterError(
            f"{', '.join(missing)} not found in {', '.join(str(d) for d in dirs)}: run `make kube` "
            f"(kube/build.sh) or point KUBE_BIN_DIR at official release binaries{hint}"
        )
    return Binaries(etcd=etcd, kube_apiserver=api, kube_proxy=proxy)  # type: ignore[arg-type]


def cache_dir(version: str) -> Path:
    return CACHE_ROOT / "kube" / version / "bin"


def built_releases() -> list[str]:
    """Releases with kube-apiserver and kube-proxy in the `make kube` cache, oldest first."""
    out = [
        p.parent.parent.name
        for p in (CACHE_ROOT / "kube").glob("v*/bin/kube-proxy")
        if (p.parent / "kube-apiserver").is_file()
    ]
    return sorted(out, key=lambda v: versions.parse(v) if _parses(v) else (0, 0, 0))


def _parses(v: str) -> bool:
    try:
        versions.parse(v)
        return True
    except versions.UnknownRelease:
        return False


def binaries_for(version: str) -> Binaries:
    """etcd, kube-apiserver and kube-proxy of `version`; LocalClusterError (one line, saying how
    to build it and what is built) when this machine does not have that release."""
    bin_dir = os.environ.get("KUBE_BIN_DIR")
    if bin_dir:
        b = find_binaries(bin_dir)
        got = b.version("kube-proxy")
        if version not in got.split():
            raise LocalClusterError(
                f"KUBE_BIN_DIR={bin_dir} holds kube-proxy {got or '(no version)'}, not "
                f"{version}: unset KUBE_BIN_DIR or set kube_proxy_version to its release"
            )
        return b
    d = cache_dir(version)
    missing = [n for n in ("kube-apiserver", "kube-proxy") if not os.access(d / n, os.X_OK)]
    if missing:
        built = ", ".join(built_releases()) or "none"
        raise LocalClusterError(
            f"kube-proxy {version} is not built ({', '.join(missing)} missing in {d}): run "
            f"`make kube KUBE_VERSION={version}` (built here: {built}; buildable: any release from v1.33.0 "
            f"the Go module proxy serves; the lab renders {versions.known_range()})"
        )
    return find_binaries(d)
