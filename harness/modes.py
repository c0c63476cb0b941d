"""The proxy-mode registry: every kube-proxy mode kpbench measures, declared once.

Everything that depends on the mode (scenario validation, kernel planning, dataplane construction,
kube-proxy configuration, validation expectations, plot style, reading kube-proxy's state back)
reads its `ModeSpec` here instead of spelling out the list of modes or `if mode == ...` chains.
Adding a mode: see "Adding a mode" in docs/ARCHITECTURE.md.

This module sits on the ground floor beside scenario.py and model.py: it imports only the
standard library (the worker runs inside a UML guest); the dataplane class is named, not
imported, and loaded on first use.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class UnknownModeError(ValueError):
    """A proxy mode name that is not registered; the message lists the known ones."""


@dataclass(frozen=True)
class SectionOptions:
    """What the local target's KubeProxyConfiguration may put into a mode's own section."""

    sync_period: str
    min_sync_period: str
    masquerade_all: bool = False
    strict_arp: bool = False
    ipvs_scheduler: str = "rr"


@dataclass(frozen=True)
class ReadBack:
    """How to read kube-proxy's programmed state of this mode from a node namespace.

    Argument vectors may hold "{backend}" (the scenario's iptables backend, legacy | nft).
    service_ips: one command whose output lists every programmed ClusterIP, picked by `ip_pattern`
    (group 1). dump: the commands whose outputs, joined by newlines, are the full state (fidelity).
    """

    service_ips: tuple[str, ...]
    ip_pattern: re.Pattern[str]
    dump: tuple[tuple[str, ...], ...]

    def service_ips_argv(self, backend: str) -> list[str]:
        return [a.format(backend=backend) for a in self.service_ips]

    def dump_argvs(self, backend: str) -> list[list[str]]:
        return [[a.format(backend=backend) for a in argv] for argv in self.dump]


@dataclass(frozen=True)
class ModeSpec:
    """One proxy mode: everything the harness needs to know about it, in one place."""

    name: str  # kube-proxy's mode name (KubeProxyConfiguration `mode`, `--modes`, results' `mode` column)
    dataplane: str  # "module:Class" of the lab dataplane (harness.dataplane.base.Dataplane), imported lazily
    by_node: bool  # the dataplane programs by endpoint locality: it is built with node=
    kernel_features: tuple[str, ...]  # lab/caps.py FEATURES it needs, besides the iptables backend's
    iptables_based: bool  # also programs iptables (with the scenario's backend); kube-proxy's startup
    #                      cleanup leaves the other iptables-based modes' state behind (a switch needs --cleanup)
    kube_proxy_section: Callable[[SectionOptions], dict[str, Any]]  # local target: the mode's config section
    takes_scheduler: bool  # cluster target: the mode's section gets `scheduler` from scenario.ipvs.scheduler
    no_endpoints: frozenset[str]  # validate.py: accepted outcomes for a Service without endpoints
    color: str  # plots
    marker: str
    read_back: ReadBack  # local target: kube-proxy's programmed Services and full state
    min_node_kernel: tuple[int, int] | None = None  # cluster target: oldest node kernel that runs it

    def kernel_needs(self, iptables_backend: str = "legacy") -> list[str]:
        """Kernel features (lab/caps.py FEATURES) this mode needs with `iptables_backend`."""
        ipt = "iptables_legacy" if iptables_backend == "legacy" else "iptables_nft"
        return list(self.kernel_features) + ([ipt] if self.iptables_based else [])

    def dataplane_class(self) -> type:
        module, _, cls = self.dataplane.partition(":")
        return getattr(importlib.import_module(module), cls)


def _iptables_section(o: SectionOptions) -> dict[str, Any]:
    return {
        "syncPeriod": o.sync_period,
        "minSyncPeriod": o.min_sync_period,
        "masqueradeAll": o.masquerade_all,
        "masqueradeBit": 14,
        "localhostNodePorts": True,
    }


def _ipvs_section(o: SectionOptions) -> dict[str, Any]:
    return {
        "syncPeriod": o.sync_period,
        "minSyncPeriod": o.min_sync_period,
        "scheduler": o.ipvs_scheduler,
        "strictARP": o.strict_arp,
    }


def _nftables_section(o: SectionOptions) -> dict[str, Any]:
    return {
        "syncPeriod": o.sync_period,
        "minSyncPeriod": o.min_sync_period,
        "masqueradeAll": o.masquerade_all,
        "masqueradeBit": 14,
    }


_REGISTRY: dict[str, ModeSpec] = {}


def register(spec: ModeSpec) -> ModeSpec:
    """Add a mode to the registry (its position is its place in the default `modes` list)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"proxy mode {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


register(
    ModeSpec(
        name="iptables",
        dataplane="harness.dataplane.iptables:IptablesDataplane",
        by_node=False,
        kernel_features=(),
        iptables_based=True,
        kube_proxy_section=_iptables_section,
        takes_scheduler=False,
        # filter REJECT (icmp-port-unreachable)
        no_endpoints=frozenset({"reject"}),
        color="#d62728",
        marker="o",
        read_back=ReadBack(
            service_ips=("iptables-{backend}-save",),
            ip_pattern=re.compile(r"^-A KUBE-SERVICES -d (\d+\.\d+\.\d+\.\d+)/32 ", re.M),
            dump=(("iptables-{backend}-save",),),
        ),
    )
)

register(
    ModeSpec(
        name="ipvs",
        dataplane="harness.dataplane.ipvs:IpvsDataplane",
        by_node=True,
        kernel_features=("ipvs", "ipset"),
        iptables_based=True,
        kube_proxy_section=_ipvs_section,
        takes_scheduler=True,
        # the virtual server exists with no real server: the kernel answers that itself (either accepted)
        no_endpoints=frozenset({"reject", "drop"}),
        color="#1f77b4",
        marker="s",
        # kube-proxy writes the ipsets after every virtual server of the sync (and the kernel's IPVS
        # listing undercounts with several namespaces): KUBE-CLUSTER-IP is the record
        read_back=ReadBack(
            service_ips=("ipset", "list", "KUBE-CLUSTER-IP"),
            ip_pattern=re.compile(r"^(\d+\.\d+\.\d+\.\d+),(?:tcp|udp|sctp):\d+", re.M),
            dump=(
                ("ipvsadm", "-Sn"),
                ("ipset", "save"),
                ("ip", "-4", "addr", "show", "dev", "kube-ipvs0"),
                ("iptables-legacy-save",),
            ),
        ),
    )
)

register(
    ModeSpec(
        name="nftables",
        dataplane="harness.dataplane.nftables:NftablesDataplane",
        by_node=True,  # v1.36+: the hairpin-connections set holds only the node's own endpoints
        kernel_features=("nft_nat",),
        iptables_based=False,
        kube_proxy_section=_nftables_section,
        takes_scheduler=False,
        # goto reject-chain
        no_endpoints=frozenset({"reject"}),
        color="#2ca02c",
        marker="^",
        read_back=ReadBack(
            service_ips=("nft", "list", "table", "ip", "kube-proxy"),
            ip_pattern=re.compile(r'(\d+\.\d+\.\d+\.\d+) \. (?:tcp|udp|sctp) \. \d+ (?:comment "[^"]*" )?: '),
            dump=(("nft", "list", "ruleset"),),
        ),
        min_node_kernel=(5, 13),
    )
)

MODES: tuple[str, ...] = tuple(_REGISTRY)
# measured on every kernel a run uses when modes are split across kernels (lab/caps.py)
BRIDGE_MODE = "iptables"


def mode(name: str) -> ModeSpec:
    """The registered mode `name`; UnknownModeError (listing the known ones) otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModeError(f"unknown proxy mode {name!r}: use one of {', '.join(MODES)}") from None


def all_modes() -> Mapping[str, ModeSpec]:
    """Every registered mode by name, in registration order."""
    return dict(_REGISTRY)
