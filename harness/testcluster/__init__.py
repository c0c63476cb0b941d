"""The offline multi-node test cluster that `kpbench cluster up` builds on this machine: control
plane processes on the host, per node a network namespace with its own containerd and kubelet.
Distinct from harness/cluster (the cluster target's in-cluster code) and harness/targets/local*
(the process-based local target).

Python API (tests): `up(nodes=2, kube_version=...) -> TestCluster` (.kubeconfig, .nodes) and
`down()`; modules by job: plan (names, addresses), state (what was started, on disk), network,
controlplane, node (containerd + kubelet), addons (kube-proxy the kubeadm way), sysctls,
lifecycle (up / down / status), artifacts (binaries), images (images without a registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.testcluster.lifecycle import TestCluster


def up(nodes: int = 2, kube_version: str | None = None, **kw: Any) -> TestCluster:
    """Bring a test cluster up (harness.testcluster.lifecycle.up)."""
    from harness.testcluster.lifecycle import up as _up

    return _up(nodes, kube_version, **kw)


def down(**kw: Any) -> list[str]:
    """Remove the test cluster and everything it left (harness.testcluster.lifecycle.down)."""
    from harness.testcluster.lifecycle import down as _down

    return _down(**kw)
