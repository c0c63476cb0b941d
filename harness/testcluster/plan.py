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

CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
MAX_NODES = 20
MAX_INSTANCE = 9
INSTANCE_ENV = "KPBENCH_TESTCLUSTER_INSTANCE"


@dataclass(frozen=True)
class Names:
    """Every machine-wide name of one test cluster. Instance 0 (the default) is `kpbtc-*`; another
    instance N (KPBENCH_TESTCLUSTER_INSTANCE, e.g. a test beside a developer's cluster) is
    `kpbtcN-*` with its own underlay 10.253.N.0/24, cgroup parent and socket directory."""

    instance: int = 0

    @property
    def prefix(self) -> str:
        return f"kpbtc{self.instance or ''}-"

    @property
    def api_netns(self) -> str:
        return f"{self.prefix}api"

    @property
    def host_link(self) -> str:  # the one link in the root namespace (its peer is on the API bridge)
        return f"{self.prefix}host"

    @property
    def host_peer(self) -> str:  # that peer's name inside the API namespace
        return f"{self.prefix}up"

    @property
    def underlay_cidr(self) -> str:
        return f"10.253.{self.instance}.0/24"

    @property
    def host_addr(self) -> str:
        return f"10.253.{self.instance}.254"

    @property
    def cgroup_parent(self) -> str:  # /sys/fs/cgroup/<controller>/<parent>/<node>
        return f"kpbench-testcluster{self.instance or ''}"

    @property
    def socket_dir(self) -> Path:
        # containerd's sockets: a unix socket path has at most 107 bytes, a state dir may be deep
        return Path(f"/run/kpbtc{self.instance or ''}")


def current_instance() -> int:
    """$KPBENCH_TESTCLUSTER_INSTANCE (0 to 9), default 0; ValueError naming the variable."""
    raw = os.environ.get(INSTANCE_ENV, "").strip() or "0"
    if not raw.isdigit() or not 0 <= int(raw) <= MAX_INSTANCE:
        raise ValueError(f"{INSTANCE_ENV}={raw!r}: a test cluster instance is 0 to {MAX_INSTANCE}")
    return int(raw)


def default_dir(instance: int | None = None) -> Path:
    """Where the cluster keeps its state, certificates, logs and node directories."""
    env = os.environ.get("KPBENCH_TESTCLUSTER_DIR")
    if env:
        return Path(env)
    i = current_instance() if instance is None else instance
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kpbench" / f"testcluster{i or ''}"


@dataclass(frozen=True)
class NodePlan:
    """One node: its namespace (= its Kubernetes name), addresses and directories."""

    index: int
    name: str
    ip: str
    pod_cidr: str
    dir: Path
    names: Names = Names()

    @property
    def netns(self) -> str:
        return self.name

    @property
    def pod_gateway(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    @property
    def cgroup_root(self) -> str:
        return f"/{self.names.cgroup_parent}/{self.name}"

    @property
    def short_dir(self) -> Path:
        """`dir` as the node's own processes see it (bind-mounted there in the node's mount
        namespace): kubelet makes unix sockets under its root dir, and a socket path has at most
        107 bytes while a state directory may be deep."""
        return self.names.socket_dir / self.name / "d"

    @property
    def containerd_socket(self) -> Path:
        return self.names.socket_dir / self.name / "containerd.sock"


@dataclass(frozen=True)
class ClusterPlan:
    """The whole cluster: the control plane's namespace and address, the nodes, the CIDRs."""

    kube_version: str
    dir: Path
    nodes: tuple[NodePlan, ...]
    names: Names = Names()
    cluster_cidr: str = CLUSTER_CIDR
    service_cidr: str = SERVICE_CIDR

    @property
    def api_netns(self) -> str:
        return self.names.api_netns

    @property
    def underlay_cidr(self) -> str:
        return self.names.underlay_cidr

    @property
    def host_addr(self) -> str:
        return self.names.host_addr

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


def make_plan(
    nodes: int, kube_version: str, directory: Path | None = None, instance: int | None = None
) -> ClusterPlan:
    """The plan of a cluster of `nodes` nodes (instance: default $KPBENCH_TESTCLUSTER_INSTANCE or
    0); ValueError for a count or instance out of range."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes {nodes}: a test cluster has 1 to {MAX_NODES} nodes")
    names = Names(current_instance() if instance is None else instance)
    d = directory or default_dir(names.instance)
    base = ipaddress.ip_network(names.underlay_cidr).network_address
    subnets = list(ipaddress.ip_network(CLUSTER_CIDR).subnets(new_prefix=24))
    plans = tuple(
        NodePlan(
            index=i,
            name=f"{names.prefix}node{i}",
            ip=str(base + 10 + i),
            pod_cidr=str(subnets[i]),
            dir=d / "nodes" / f"node{i}",
            names=names,
        )
        for i in range(1, nodes + 1)
    )
    return ClusterPlan(kube_version=kube_version, dir=d, nodes=plans, names=names)
