"""Why an integration test against the built Kubernetes binaries cannot run here (or None)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable


def kube_skip_reason(tools: Iterable[str], root_for: str) -> str | None:
    """The reason to skip a test that needs root (for `root_for`), the host `tools` and the
    Kubernetes binaries `make kube` builds; None when it can run."""
    if os.geteuid() != 0:
        return f"needs root ({root_for})"
    for tool in tools:
        if not shutil.which(tool):
            return f"{tool} not installed (make setup)"
    from harness.targets import localcluster as lc

    try:
        lc.find_binaries()
    except lc.LocalClusterError as e:
        return f"kube binaries not built (make kube): {e}"
    return None
