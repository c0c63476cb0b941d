"""The cluster target's building blocks: kubeconfig and preflight, kube-proxy's kubeadm config,
rendered manifests, Service creation at a bounded rate, mode switching and restore.

Every user-facing failure is a ClusterError (a LabError and a ValueError), so `kpbench` prints it
as one line and exits with status 2. Nothing here imports heavy modules at import time except the
official `kubernetes` client (only the modules that talk to the API server import it).
"""

from __future__ import annotations

LABEL_RUN = "kpbench.io/run"
LABEL_ROLE = "kpbench.io/role"
ANN_MODIFIED = "kpbench.io/modified-by-run"  # set on the kube-proxy ConfigMap while a run owns it
PAUSE_KEY = "kpbench.io/kube-proxy-paused"  # nodeSelector key that takes kube-proxy off every node
RESTART_ANN = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
KP_NAMESPACE = "kube-system"
KP_NAME = "kube-proxy"
KP_KEY = "config.conf"
RESTORE_FILE = "cluster-restore.json"


from harness.lab.netns import LabError  # noqa: E402  (light: ctypes/subprocess only)


class ClusterError(LabError, ValueError):
    """A problem with the cluster or the kubeconfig: one line, what was found and what to do.

    A LabError (which `kpbench` prints as one line with exit status 2) and a ValueError."""


def namespace_for(run_id: str) -> str:
    """The run's dedicated namespace (DNS-1123 label, at most 63 characters)."""
    safe = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"kpbench-{safe}"[:63].rstrip("-")


def run_label_value(run_id: str) -> str:
    """A label value (<= 63 chars, alphanumeric at both ends) identifying the run."""
    safe = "".join(c if (c.isalnum() or c in "-_.") else "-" for c in run_id)
    return safe[-63:].strip("-_.") or "run"
