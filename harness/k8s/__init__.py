"""Kubernetes code shared by the local target (harness.targets.local*) and the cluster target
(harness.targets.cluster, harness.cluster): API client setup, raw JSON requests, bulk creation of
Services + EndpointSlices at a bounded rate, the KubeProxyConfiguration, and kube-proxy's metrics.

Above dataplane/lab (it uses harness.lab.netns to reach an apiserver from a namespace), below the
targets. The official `kubernetes` client is imported only where an API call is made.
"""

from __future__ import annotations

from harness.lab.netns import LabError


class KubeError(LabError):
    """A Kubernetes API call or object failed; the message says which and why."""
