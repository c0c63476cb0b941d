"""Proxy-mode dataplanes: one class per kube-proxy mode, all behind harness.dataplane.base.Dataplane.

Imports only the standard library (and pyroute2 for ipvs, lazily): the worker runs inside UML.
"""

from __future__ import annotations

from typing import Sequence

from harness.dataplane.base import Change, Dataplane, DataplaneSettings
from harness.model import Service

MODES = ("iptables", "ipvs", "nftables")


def make_dataplane(mode: str, ns: str | None, settings: DataplaneSettings | None = None,
                   node: str | None = None) -> Dataplane:
    """The dataplane of `mode` ("iptables", "ipvs", "nftables") programming namespace `ns`.

    node: the model node this dataplane is (its endpoints are the local ones; only IPVS mode
    programs anything by locality: KUBE-LOOP-BACK). None counts every endpoint as local.
    """
    settings = settings or DataplaneSettings()
    if mode == "iptables":
        from harness.dataplane.iptables import IptablesDataplane

        return IptablesDataplane(ns, settings)
    if mode == "ipvs":
        from harness.dataplane.ipvs import IpvsDataplane

        return IpvsDataplane(ns, settings, node=node)
    if mode == "nftables":
        from harness.dataplane.nftables import NftablesDataplane

        return NftablesDataplane(ns, settings, node=node)
    raise ValueError(f"unknown proxy mode {mode!r}: use one of {', '.join(MODES)}")


def render(mode: str, services: Sequence[Service], settings: DataplaneSettings | None = None) -> str:
    """What `mode` would program for `services`, in the tool's own input format."""
    return make_dataplane(mode, None, settings).render(services)


__all__ = ["Change", "Dataplane", "DataplaneSettings", "MODES", "make_dataplane", "render"]
