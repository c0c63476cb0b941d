"""The test cluster's network: node namespaces on the control plane's bridge, one link into the
root namespace for the harness and the user, routes between the nodes' pod CIDRs.

The bridge `kapi0` lives in the control plane's namespace (LocalCluster makes it), so nodes talk
to each other and to the apiserver without the root namespace forwarding or filtering anything.
The root namespace gets exactly one veth (`kpbtc-host`, 10.253.0.254/24) so the kubeconfig's
server is reachable from the host; no route, rule or sysctl of the root namespace is changed.
Netlink work runs in a thread inside the namespace (netns.call_in), as harness/lab/topology.py does.
"""

from __future__ import annotations

import os
import subprocess

from pyroute2 import IPRoute

from harness.lab import netns
from harness.lab.netns import LabError
from harness.lab.topology import delete_namespaces
from harness.testcluster.plan import ClusterPlan, Names, NodePlan

BRIDGE = "kapi0"  # LocalCluster's bridge in the API namespace
NODE_IF = "eth0"

# per-namespace sysctls of a node (a kubeadm node has these; kube-proxy needs bridged pod
# traffic to pass through iptables, and the node routes between its pods and the others)
NODE_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}
BRIDGE_NF_SYSCTLS: dict[str, str | int] = {
    "net.bridge.bridge-nf-call-iptables": 1,
    "net.bridge.bridge-nf-call-ip6tables": 1,
}


def _idx(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} not found")
    return found[0]


def _nsfd(name: str) -> int:
    return os.open(f"{netns.NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)


def attach_host(plan: ClusterPlan) -> None:
    """The root namespace's veth `kpbtc-host` (plan.host_addr) with its peer on the API bridge."""
    host_link, host_peer = plan.names.host_link, plan.names.host_peer
    fd = _nsfd(plan.api_netns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_link, kind="veth", peer={"ifname": host_peer, "net_ns_fd": fd})
            i = _idx(ipr, host_link)
            ipr.addr("add", index=i, address=plan.host_addr, prefixlen=plan.prefixlen)
            ipr.link("set", index=i, state="up")
    except LabError:
        raise
    except Exception as e:  # noqa: BLE001 - netlink errors -> one line naming the link
        raise LabError(f"creating {host_link} failed: {e}") from None
    finally:
        os.close(fd)
    netns.call_in(plan.api_netns, _enslave, host_peer)


def _enslave(ifname: str) -> None:
    with IPRoute() as ipr:
        i = _idx(ipr, ifname)
        ipr.link("set", index=i, master=_idx(ipr, BRIDGE))
        ipr.link("set", index=i, state="up")


def create_node(plan: ClusterPlan, node: NodePlan) -> None:
    """Namespace `node.netns` with eth0 (node.ip) on the API bridge, a default route to the
    control plane (which does not forward: traffic to nowhere stops there), sysctls."""
    p = subprocess.run(["ip", "netns", "add", node.netns], capture_output=True, text=True)
    if p.returncode != 0:
        raise LabError(f"ip netns add {node.netns} failed: {p.stderr.strip()}")
    sysctls = dict(NODE_SYSCTLS)
    if os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        sysctls.update(BRIDGE_NF_SYSCTLS)
    netns.sysctl(node.netns, sysctls)
    netns.call_in(plan.api_netns, _add_port, node)
    netns.call_in(node.netns, _configure_node, plan, node)


def _port_name(node: NodePlan) -> str:
    return f"kn{node.index}"


def _add_port(node: NodePlan) -> None:
    fd = _nsfd(node.netns)
    try:
        with IPRoute() as ipr:
            port = _port_name(node)
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": NODE_IF, "net_ns_fd": fd})
            i = _idx(ipr, port)
            ipr.link("set", index=i, master=_idx(ipr, BRIDGE))
            ipr.link("set", index=i, state="up")
            # the control plane reaches pods (apiserver proxy to a pod, replies to pods)
            ipr.route("add", dst=node.pod_cidr, gateway=node.ip)
    except Exception as e:  # noqa: BLE001
        raise LabError(f"attaching {node.netns} to {BRIDGE} failed: {e}") from None
    finally:
        os.close(fd)


def _configure_node(plan: ClusterPlan, node: NodePlan) -> None:
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=_idx(ipr, "lo"), state="up")
            i = _idx(ipr, NODE_IF)
            ipr.addr("add", index=i, address=node.ip, prefixlen=plan.prefixlen)
            ipr.link("set", index=i, state="up")
            for other in plan.nodes:
                if other.name != node.name:
                    ipr.route("add", dst=other.pod_cidr, gateway=other.ip)
            ipr.route("add", dst="0.0.0.0/0", gateway=plan.api_addr)
    except Exception as e:  # noqa: BLE001
        raise LabError(f"configuring {node.netns} failed: {e}") from None


def existing_namespaces(names: Names) -> list[str]:
    """Every namespace of that cluster instance on this machine (a crashed cluster's too)."""
    return netns.list_namespaces(names.prefix)


def remove(namespaces: list[str], host_links: list[str]) -> list[str]:
    """Kill what runs in the namespaces, delete them and the root namespace's links (idempotent).
    Returns what was removed."""
    done = [f"namespace {n}" for n in delete_namespaces(namespaces)]
    with IPRoute() as ipr:
        for name in host_links:
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])
                done.append(f"link {name}")
    return done
