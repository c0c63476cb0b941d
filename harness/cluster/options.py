"""Cluster target options.

The scenario schema (harness/scenario.py) has no `cluster:` section yet; until it does, the options
come from `scenario.cluster` when present (a mapping or a pydantic model with these field names),
else from $KPBENCH_CLUSTER (a YAML/JSON mapping, e.g. KPBENCH_CLUSTER='{endpoints_via: selector,
qps: 50}'), else the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from harness.cluster import ClusterError
from harness.cluster.kubeproxy_config import SyncSettings
from harness.cluster.manifests import DEFAULT_IMAGE


@dataclass
class ClusterOptions:
    endpoints_via: str = "slices"  # "slices": selector-less Services + our EndpointSlices; "selector"
    qps: float = 20.0  # object creations per second (client-side token bucket)
    burst: int = 40
    create_workers: int = 8  # concurrent requests while creating (still bounded by qps)
    image: str = DEFAULT_IMAGE
    probe_nodes: list[str] = field(default_factory=list)  # [] -> the first `probe_count` Ready nodes
    probe_count: int = 1
    backend_replicas: int = 0  # 0 -> max(2, scenario endpoints)
    locust_workers: int = 2
    cleanup: str = "auto"  # "always": kube-proxy --cleanup Jobs at every switch, not only iptables <-> ipvs
    min_sync_period: str | None = "1ms"  # 0s would be defaulted to 1s by kube-proxy
    sync_period: str | None = None
    metrics_bind_address: str | None = "0.0.0.0:10249"
    rollout_timeout_s: float = 600
    cleanup_timeout_s: float = 300
    ready_timeout_s: float = 300
    namespace_wait_s: float = 120  # at the end, how long to wait for the run's namespace to be gone

    def __post_init__(self):
        if self.endpoints_via not in ("slices", "selector"):
            raise ClusterError(
                f"cluster option endpoints_via={self.endpoints_via!r}: expected slices or selector"
            )
        if self.qps <= 0 or self.burst < 1:
            raise ClusterError(
                f"cluster options qps={self.qps}, burst={self.burst}: need qps > 0 and burst >= 1"
            )
        if self.cleanup not in ("auto", "always"):
            raise ClusterError(f"cluster option cleanup={self.cleanup!r}: expected auto or always")
        if self.locust_workers < 1:
            raise ClusterError("cluster option locust_workers must be >= 1")

    def sync(self, scheduler: str | None = None) -> SyncSettings:
        return SyncSettings(
            min_sync_period=self.min_sync_period,
            sync_period=self.sync_period,
            metrics_bind_address=self.metrics_bind_address,
            ipvs_scheduler=scheduler,
        )

    def backend_replicas_for(self, endpoints: int | None) -> int:
        if self.backend_replicas:
            return self.backend_replicas
        # one pod more than a Service's endpoints: the one-change sync's update moves a Service's
        # endpoints to a pod it did not use (its answers tell the new rules are in)
        return max(2, (endpoints or 0) + 1)

    def probe_nodes_for(self, nodes) -> list[str]:
        names = [n.name for n in nodes]
        if self.probe_nodes:
            unknown = [n for n in self.probe_nodes if n not in names]
            if unknown:
                raise ClusterError(
                    f"cluster option probe_nodes names {', '.join(unknown)}, not nodes of this "
                    f"cluster ({', '.join(names[:8])})"
                )
            return list(self.probe_nodes)
        ready = [n.name for n in nodes if n.ready and not n.control_plane] or [
            n.name for n in nodes if n.ready
        ]
        return (ready or names)[: self.probe_count]


def options_from(scenario: Any = None, env: Mapping[str, str] | None = None) -> ClusterOptions:
    env = os.environ if env is None else env
    raw: Any = getattr(scenario, "cluster", None) if scenario is not None else None
    if raw is not None and hasattr(raw, "model_dump"):
        raw = raw.model_dump()
    if raw is None and env.get("KPBENCH_CLUSTER"):
        try:
            raw = yaml.safe_load(env["KPBENCH_CLUSTER"])
        except yaml.YAMLError as e:
            raise ClusterError(
                f"$KPBENCH_CLUSTER is not a YAML mapping ({getattr(e, 'problem', e)})"
            ) from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ClusterError("cluster options must be a mapping of option names to values")
    known = {f.name for f in fields(ClusterOptions)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ClusterError(
            f"unknown cluster option(s) {', '.join(unknown)}: known are {', '.join(sorted(known))}"
        )
    if raw.get("image") is None:
        raw = {k: v for k, v in raw.items() if k != "image"}  # the scenario's "use the default"
    if "image" not in raw and env.get("KPBENCH_IMAGE"):
        raw = {**raw, "image": env["KPBENCH_IMAGE"]}
    try:
        return ClusterOptions(**raw)
    except TypeError as e:
        raise ClusterError(f"cluster options: {e}") from None
