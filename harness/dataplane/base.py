"""What every proxy-mode module offers: render, full sync, one change, read back, cleanup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from harness.model import Service
from harness.releases import DEFAULT_KUBE_VERSION

ChangeKind = Literal["add", "update", "delete"]


@dataclass(frozen=True)
class Change:
    """One Service change: `service` is the added / updated Service, or the one deleted."""

    kind: ChangeKind
    service: Service


@dataclass(frozen=True)
class DataplaneSettings:
    """kube-proxy configuration that shapes what is programmed."""

    cluster_cidr: str = "10.244.0.0/16"  # local-traffic detector: "! -s clusterCIDR" masquerade rules
    service_cidr: str = "10.96.0.0/12"
    node_ips: tuple[str, ...] = ()  # addresses NodePorts are served on
    iptables_backend: Literal["legacy", "nft"] = "legacy"
    scheduler: str = "rr"  # IPVS
    masquerade_bit: int = 14
    # the kube-proxy release whose ruleset is rendered; each mode maps it to its family
    # (harness.releases.family, which refuses a release it does not know)
    kube_version: str = DEFAULT_KUBE_VERSION


class Dataplane(Protocol):
    """One node's Service dataplane for one proxy mode, programmed inside network namespace `ns`."""

    mode: str

    def render(self, services: Sequence[Service]) -> str:
        """The state for `services` in the tool's own input format (what `kpbench render` prints)."""

    def full_sync(self, services: Sequence[Service]) -> None:
        """Remove this mode's state and program `services` from empty, as kube-proxy does at start."""

    def apply(self, services: Sequence[Service], change: Change) -> None:
        """Apply one change the way kube-proxy syncs it; `services` is the whole set after the change."""

    def counts(self) -> dict[str, int]:
        """Read back from the kernel what is installed (rules, virtual servers, elements ...)."""

    def cleanup(self) -> None:
        """Remove everything this mode programmed in the namespace."""
