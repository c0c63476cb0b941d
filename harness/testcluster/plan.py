"""The test cluster's names and addresses, decided before anything is created (pure).

    root netns: kpbtc-host 10.253.0.254 --veth-- [kapi0 bridge in kpbtc-api, 10.253.0.1: apiserver]
    kpbtc-node<i>: eth0 10.253.0.<10+i> on kapi0; pods 10.244.<i>.0/24 on its own cni bridge;
                   routes to the other nodes' pod CIDRs via their eth0 addresses (host-gw style)

Names start with `kpbtc-`, not the lab's `kpb-`: `kpbench clean` removes unclaimed `kpb-`
namespaces, and this cluster outlives the command that started it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

PREFIX = "kpbtc-"
API_NETNS = f"{PREFIX}api"
HOST_LINK = f"{PREFIX}host"  # the one link in the root namespace (its peer is on the API bridge)
HOST_PEER = "kpbtc-up"  # the peer's name inside the API namespace
UNDERLAY_CIDR = "10.253.0.0/24"
HOST_ADDR = "10.253.0.254"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
CGROUP_PARENT = "kpbench-testcluster"  # /sys/fs/cgroup/<controller>/kpbench-testcluster/<node>
MAX_NODES = 20


def default_dir() -> Path:
    """Where the cluster keeps its state, certificates, logs and node directories."""
    env = os.environ.get("KPBENCH_TESTCLUSTER_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kpbench" / "testcluster"


@dataclass(frozen=True)
class NodePlan:
    """One node: its namespace (= its Kubernetes name), addresses and directories."""

    index: int
    name: str
    ip: str
    pod_cidr: str
    dir: Path

    @property
    def netns(self) -> str:
        return self.name

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    @property
    def cgroup_root(self) -> str:
        return f"/{CGROUP_PARENT}/{self.name}"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"


@dataclass(frozen=True)
class ClusterPlan:
    """The whole cluster: the control plane's namespace and address, the nodes, the CIDRs."""

    kube_version: str
    dir: Path
    nodes: tuple[NodePlan, ...]
    api_netns: str = API_NETNS
    underlay_cidr: str = UNDERLAY_CIDR
    host_addr: str = HOST_ADDR
    cluster_cidr: str = CLUSTER_CIDR
    service_cidr: str = SERVICE_CIDR

    @property
    def api_addr(self) -> str:
        return str(ipaddress.ip_network(self.underlay_cidr).network_address + 1)

    @property
    def server(self) -> str:
        return f"https://{self.api_addr}:6443"

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.underlay_cidr).prefixlen

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"


def make_plan(nodes: int, kube_version: str, directory: Path | None = None) -> ClusterPlan:
    """The plan of a cluster of `nodes` nodes; ValueError for a count outside 1..MAX_NODES."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes {nodes}: a test cluster has 1 to {MAX_NODES} nodes")
    d = directory or default_dir()
    base = ipaddress.ip_network(UNDERLAY_CIDR).network_address
    cluster = ipaddress.ip_network(CLUSTER_CIDR)
    subnets = list(cluster.subnets(new_prefix=24))
    plans = tuple(
        NodePlan(
            index=i,
            name=f"{PREFIX}node{i}",
            ip=str(base + 10 + i),
            pod_cidr=str(subnets[i]),
            dir=d / "nodes" / f"node{i}",
        )
        for i in range(1, nodes + 1)
    )
    return ClusterPlan(kube_version=kube_version, dir=d, nodes=plans)
