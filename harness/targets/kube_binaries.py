"""The Kubernetes binaries of one release for the local target, and never another release's.

`make kube KUBE_VERSION=vX.Y.Z` builds each release into its own folder
(~/.cache/kpbench/kube/<version>/bin); KUBE_BIN_DIR may point at official release binaries, whose
kube-proxy must then report the requested release.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness import releases as versions
from harness.targets import localcluster as lc


def cache_dir(version: str) -> Path:
    return lc.CACHE_ROOT / "kube" / version / "bin"


def built_releases() -> list[str]:
    """Releases with kube-apiserver and kube-proxy in the `make kube` cache, oldest first."""
    out = [p.parent.parent.name for p in (lc.CACHE_ROOT / "kube").glob("v*/bin/kube-proxy")
           if (p.parent / "kube-apiserver").is_file()]
    return sorted(out, key=lambda v: versions.parse(v) if _parses(v) else (0, 0, 0))


def _parses(v: str) -> bool:
    try:
        versions.parse(v)
        return True
    except versions.UnknownRelease:
        return False


def binaries_for(version: str) -> lc.Binaries:
    """etcd, kube-apiserver and kube-proxy of `version`; LocalClusterError (one line, saying how
    to build it and what is built) when this machine does not have that release."""
    bin_dir = os.environ.get("KUBE_BIN_DIR")
    if bin_dir:
        b = lc.find_binaries(bin_dir)
        got = b.version("kube-proxy")
        if version not in got.split():
            raise lc.LocalClusterError(f"KUBE_BIN_DIR={bin_dir} holds kube-proxy {got or '(no version)'}, not "
                                       f"{version}: unset KUBE_BIN_DIR or set kube_proxy_version to its release")
        return b
    d = cache_dir(version)
    missing = [n for n in ("kube-apiserver", "kube-proxy") if not os.access(d / n, os.X_OK)]
    if missing:
        built = ", ".join(built_releases()) or "none"
        raise lc.LocalClusterError(
            f"kube-proxy {version} is not built ({', '.join(missing)} missing in {d}): run "
            f"`make kube KUBE_VERSION={version}` (built here: {built}; buildable: any release from v1.33.0 "
            f"the Go module proxy serves; the lab renders {versions.known_range()})")
    return lc.find_binaries(d)
