"""The two-node lab of ARCHITECTURE.md, built in network namespaces of the current kernel.

    client --veth-- [cbr0 node-a eth0] ==veth underlay== [eth0 node-b cbr0] --veth-- pod-b*
    pod-a* --veth--/

- node-a / node-b: underlay veth `eth0` 10.255.0.1/24 <-> 10.255.0.2/24, a bridge `cbr0` holding
  the node's pod gateway (model.node_pod_cidr(node), .1), the other node's pod subnet routed via
  its underlay address (host-gw style), and a default route via an underlay gateway that nobody
  answers for (a static neighbour entry), so traffic to a Service address that nothing DNATs has a
  route but goes nowhere, as upstream of a real node;
- one namespace per model.Pod (`eth0` on its node's bridge, default route via the gateway), plus
  the client pod (model.client_ip) on node a.

Nothing is created in the namespace the caller runs in: veth pairs are created inside a node
namespace with the peer placed directly in the target namespace. Netlink work runs in a thread
that entered the namespace (netns.call_in), so building the lab forks only a few `ip` processes
(cheap on the host, and it matters in UML where every fork/exec is slow).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from harness.lab import netns, registry
from harness.lab.netns import LabError
from harness.model import Model, Pod

if TYPE_CHECKING:
    from harness.lab.backends import Backends

UNDERLAY_CIDR = "10.255.0.0/24"
BRIDGE = "cbr0"
UNDERLAY_IF = "eth0"
BLACKHOLE_GW = "10.255.0.254"  # in UNDERLAY_CIDR, answered by nobody
BLACKHOLE_MAC = "02:00:00:00:00:fe"
POD_IF = "eth0"

# What a kube-proxy node has (kube-proxy itself or the node's setup sets these).
NODE_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv4.conf.all.route_localnet": 1,  # NodePorts on 127.0.0.1 (iptables mode)
    "net.ipv4.conf.all.arp_ignore": 0,
    "net.ipv4.conf.all.arp_announce": 0,
}
BRIDGE_NF_SYSCTLS: dict[str, str | int] = {  # only if br_netfilter is present (per netns since 5.3)
    "net.bridge.bridge-nf-call-iptables": 1,
    "net.bridge.bridge-nf-call-ip6tables": 1,
}
POD_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}
# The client opens many short connections (probes, load): allow reuse of TIME_WAIT ports.
CLIENT_SYSCTLS: dict[str, str | int] = {
    **POD_SYSCTLS,
    "net.ipv4.tcp_tw_reuse": 1,
    "net.ipv4.ip_local_port_range": "1024 65000",
}


def _ip_batch(lines: Sequence[str], *, check: bool = True) -> None:
    if not lines:
        return
    p = subprocess.run(
        ["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    if check and p.returncode != 0:
        raise LabError(f"ip -batch failed: {p.stderr.strip()[:1000]}")


def namespace_pids(names: Sequence[str]) -> dict[str, list[int]]:
    """pids of processes whose network namespace is one of `names` (one scan of /proc, no exec)."""
    inodes: dict[tuple[int, int], str] = {}
    for n in names:
        try:
            st = os.stat(f"{netns.NETNS_DIR}/{n}")
            inodes[(st.st_dev, st.st_ino)] = n
        except FileNotFoundError:
            pass
    out: dict[str, list[int]] = {n: [] for n in names}
    if not inodes:
        return out
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            st = os.stat(f"/proc/{d}/ns/net")
        except OSError:
            continue
        owner = inodes.get((st.st_dev, st.st_ino))
        if owner:
            out[owner].append(int(d))
    return out


def delete_namespaces(names: Sequence[str]) -> list[str]:
    """Kill every process in the namespaces, then delete them (idempotent); returns those removed."""
    present = [n for n in names if os.path.exists(f"{netns.NETNS_DIR}/{n}")]
    for pids in namespace_pids(present).values():
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    _ip_batch([f"netns delete {n}" for n in present], check=False)
    for n in names:
        registry.unregister("netns", n)
    return [n for n in present if not os.path.exists(f"{netns.NETNS_DIR}/{n}")]


class Lab:
    """The lab for one model; `with Lab(model, tag) as lab:` builds it and removes it at the end.

    backends=True also runs nginx in every pod namespace (harness.lab.backends).
    """

    def __init__(self, model: Model, tag: str = "lab", *, backends: bool = True):
        nodes = tuple(model.spec.nodes)
        if len(nodes) != 2:
            raise LabError(f"the lab has exactly two nodes; the model has {len(nodes)}: {', '.join(nodes)}")
        if not tag or not all(c.isalnum() or c in "_" for c in tag):
            raise LabError(f"lab tag {tag!r}: use letters, digits and _ only")
        self.model = model
        self.tag = tag
        self.nodes = nodes
        self.with_backends = backends
        self.backends: Backends | None = None  # once up
        self.timings: dict[str, float] = {}
        self._up = False
        underlay = list(ipaddress.ip_network(UNDERLAY_CIDR).hosts())
        self._node_ip = {n: str(underlay[i]) for i, n in enumerate(nodes)}
        self._pod_if: dict[str, str] = {}  # pod ns -> node-side veth name
        for i, pod in enumerate(model.pods):
            name = f"veth{pod.name}"
            self._pod_if[pod.name] = name if len(name) <= 15 else f"vethp{i}"

    # --- names ---------------------------------------------------------------------------
    def node_ns(self, node: str) -> str:
        if node not in self.nodes:
            raise KeyError(f"no node {node!r} (nodes: {', '.join(self.nodes)})")
        return netns.ns_name(self.tag, f"node-{node}")

    @property
    def client_ns(self) -> str:
        return netns.ns_name(self.tag, "client")

    @property
    def client_ip(self) -> str:
        return self.model.client_ip

    def pod_ns(self, pod: Pod | str) -> str:
        name = pod.name if isinstance(pod, Pod) else pod
        return netns.ns_name(self.tag, f"pod-{name}")

    def node_ip(self, node: str) -> str:
        return self._node_ip[node]

    def gateway(self, node: str) -> str:
        return str(ipaddress.ip_network(self.model.node_pod_cidr(node)).network_address + 1)

    @property
    def namespaces(self) -> list[str]:
        return (
            [self.node_ns(n) for n in self.nodes]
            + [self.client_ns]
            + [self.pod_ns(p) for p in self.model.pods]
        )

    def describe(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "nodes": {
                n: {"ns": self.node_ns(n), "ip": self.node_ip(n), "pod_cidr": self.model.node_pod_cidr(n)}
                for n in self.nodes
            },
            "client": {"ns": self.client_ns, "ip": self.client_ip},
            "pods": [
                {"name": p.name, "node": p.node, "ip": p.ip, "ports": list(p.ports), "ns": self.pod_ns(p)}
                for p in self.model.pods
            ],
        }

    # --- lifecycle -------------------------------------------------------------------------
    def up(self) -> Lab:
        t0 = time.monotonic()
        existing = [n for n in self.namespaces if os.path.exists(f"{netns.NETNS_DIR}/{n}")]
        if existing:
            rec = registry.lookup("netns", existing[0])
            if rec and registry.owner_alive(rec) and rec.get("owner_pid") != os.getpid():
                raise LabError(
                    f"lab {self.tag} is in use by pid {rec['owner_pid']} "
                    f"(namespace {existing[0]} exists): use another tag"
                )
            delete_namespaces(existing)  # leftovers of a crashed run with the same tag
        registry.register("lab", self.tag, namespaces=self.namespaces)
        self._up = True
        try:
            self._create_namespaces()
            self._configure()
            self.timings["topology_s"] = time.monotonic() - t0
            if self.with_backends:
                from harness.lab.backends import Backends

                t1 = time.monotonic()
                self.backends = Backends(self.model.pods, self.pod_ns, tag=self.tag)
                self.backends.start()
                self.timings["backends_s"] = time.monotonic() - t1
        except BaseException:
            self.down()
            raise
        self.timings["up_s"] = time.monotonic() - t0
        return self

    def down(self) -> None:
        """Stop the backends and remove every namespace of the lab (idempotent)."""
        t0 = time.monotonic()
        if self.backends is not None:
            self.backends.stop()
            self.backends = None
        delete_namespaces(self.namespaces)
        registry.unregister("lab", self.tag)
        self._up = False
        self.timings["down_s"] = time.monotonic() - t0

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- building --------------------------------------------------------------------------
    def _create_namespaces(self) -> None:
        names = self.namespaces
        _ip_batch([f"netns add {n}" for n in names])
        for n in names:
            registry.register("netns", n, name=n, lab=self.tag)
        # sysctls before any link exists: new interfaces copy conf/default
        br_nf = os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables")
        for node in self.nodes:
            netns.sysctl(self.node_ns(node), {**NODE_SYSCTLS, **(BRIDGE_NF_SYSCTLS if br_nf else {})})
        netns.sysctl(self.client_ns, CLIENT_SYSCTLS)
        for p in self.model.pods:
            netns.sysctl(self.pod_ns(p), POD_SYSCTLS)

    def _configure(self) -> None:
        a, b = self.nodes
        # nodes: underlay (created in node a, peer straight into node b), bridges, pod veths
        netns.call_in(self.node_ns(a), self._build_node, a, b, True)
        netns.call_in(self.node_ns(b), self._build_node, b, a, False)
        # pod side: address, up, default route via the node's gateway
        netns.call_in(self.client_ns, self._build_pod, self.client_ip, self.nodes[0])
        for p in self.model.pods:
            netns.call_in(self.pod_ns(p), self._build_pod, p.ip, p.node)

    def _build_node(self, node: str, other: str, create_underlay: bool) -> None:
        prefix = ipaddress.ip_network(UNDERLAY_CIDR).prefixlen
        cidr = ipaddress.ip_network(self.model.node_pod_cidr(node))
        fds: list[int] = []
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=_idx(ipr, "lo"), state="up")
                if create_underlay:
                    fd = _nsfd(self.node_ns(other), fds)
                    ipr.link(
                        "add", ifname=UNDERLAY_IF, kind="veth", peer={"ifname": UNDERLAY_IF, "net_ns_fd": fd}
                    )
                u = _idx(ipr, UNDERLAY_IF)
                ipr.addr("add", index=u, address=self.node_ip(node), prefixlen=prefix)
                ipr.link("set", index=u, state="up")
                ipr.link("add", ifname=BRIDGE, kind="bridge")
                br = _idx(ipr, BRIDGE)
                ipr.addr("add", index=br, address=self.gateway(node), prefixlen=cidr.prefixlen)
                ipr.link("set", index=br, state="up")
                members: list[tuple[str, str]] = [
                    (self._pod_if[p.name], self.pod_ns(p)) for p in self.model.pods if p.node == node
                ]
                if node == self.nodes[0]:
                    members.insert(0, ("vethclient", self.client_ns))
                for host_if, pod_ns in members:
                    fd = _nsfd(pod_ns, fds)
                    ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": POD_IF, "net_ns_fd": fd})
                    i = _idx(ipr, host_if)
                    ipr.link("set", index=i, master=br)
                    # hairpin, as Kubernetes' bridge plugins set it: a pod reaching a Service whose
                    # endpoint is itself has its DNATed packet sent back out the port it came in on
                    ipr.brport("set", index=i, mode=1)
                    ipr.link("set", index=i, state="up")
                ipr.route("add", dst=self.model.node_pod_cidr(other), gateway=self.node_ip(other))
                # default route to a gateway nobody answers for: un-DNATed Service traffic leaves
                # the node and is lost (as it would be upstream of a real node); pointing it at the
                # other node would let that node's rules hide this node's missing ones
                ipr.neigh("replace", dst=BLACKHOLE_GW, lladdr=BLACKHOLE_MAC, ifindex=u, state=0x80)
                ipr.route("add", dst="0.0.0.0/0", gateway=BLACKHOLE_GW)
        except LabError:
            raise
        except Exception as e:  # noqa: BLE001 - netlink/OS errors -> one-line LabError naming the node
            raise LabError(f"building node {node} in {self.node_ns(node)} failed: {e}") from None
        finally:
            for fd in fds:
                os.close(fd)

    def _build_pod(self, ip: str, node: str) -> None:
        cidr = ipaddress.ip_network(self.model.node_pod_cidr(node))
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=_idx(ipr, "lo"), state="up")
                i = _idx(ipr, POD_IF)
                ipr.addr("add", index=i, address=ip, prefixlen=cidr.prefixlen)
                ipr.link("set", index=i, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=self.gateway(node))
        except Exception as e:  # noqa: BLE001 - netlink/OS errors -> one-line LabError naming the pod
            raise LabError(f"configuring pod {ip} failed: {e}") from None


def _idx(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} not found")
    return found[0]


def _nsfd(name: str, fds: list[int]) -> int:
    fd = os.open(f"{netns.NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    fds.append(fd)
    return fd
