"""Fixtures shared by integration test modules."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest


def testcluster_skip_reason(kube_version: str) -> str | None:
    """Why the offline test cluster cannot come up here (None: it can), without building anything."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, containerd, kubelet)"
    from harness.errors import UserError

    try:
        from harness.testcluster.artifacts import cluster_binaries
        from harness.testcluster.images import plan as image_plan
    except ImportError as e:
        return f"harness.testcluster not complete on this branch ({e})"
    try:
        cluster_binaries(kube_version)
        # an archive of each image, if not of this very source: up() rebuilds only the harness's
        # source layer then (about a minute); a cold build (several minutes) is make cluster-images'
        missing = [
            name
            for name, path, _ in image_plan(kube_version)
            if not path.exists() and not list(path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.tar"))
        ]
    except UserError as e:
        return str(e)
    if missing:
        return f"images not built: {', '.join(missing)} (make cluster-images)"
    return None


# its own names and addresses, beside a developer's cluster (instance 0); KPBENCH_TEST_INSTANCE
# gives parallel sessions one each
TESTCLUSTER_INSTANCE = int(os.environ.get("KPBENCH_TEST_INSTANCE", "8"))


@pytest.fixture(scope="module")
def testcluster():
    """A 2-node offline test cluster (harness.testcluster) of its own instance for a test module:
    brought up here and taken down after the module (an instance already up, left by an
    interrupted session, is used and left up)."""
    from harness.targets.local_binaries import pinned_kube_version

    version = pinned_kube_version()
    with pytest.MonkeyPatch.context() as mp:
        if os.geteuid() == 0:
            try:
                from harness.testcluster.plan import INSTANCE_ENV, make_plan
                from harness.testcluster.state import load
            except ImportError:
                INSTANCE_ENV, found = None, None
            else:
                mp.setenv(INSTANCE_ENV, str(TESTCLUSTER_INSTANCE))
                found = load(make_plan(2, version).state_file)
            if found is not None and found.state.phase == "up":
                yield SimpleNamespace(
                    kubeconfig=found.state.kubeconfig,
                    nodes=list(found.state.nodes),
                    brought_up=False,
                    timings={},
                )
                return
        reason = testcluster_skip_reason(version)
        if reason:
            pytest.skip(reason)
        import harness.testcluster as tc

        cluster = tc.up(2, version, log=lambda s: None)
        try:
            yield SimpleNamespace(
                kubeconfig=str(cluster.kubeconfig),
                nodes=list(cluster.nodes),
                brought_up=True,
                timings=cluster.timings,
            )
        finally:
            tc.down(log=lambda s: None)
