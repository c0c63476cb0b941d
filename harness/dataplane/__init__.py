"""Proxy-mode dataplanes: one class per kube-proxy mode, all behind harness.dataplane.base.Dataplane.

Imports only the standard library (and pyroute2 for ipvs, lazily): the worker runs inside UML.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness import modes
from harness.dataplane.base import Change, Dataplane, DataplaneSettings
from harness.model import Service
from harness.modes import MODES


def make_dataplane(
    mode: str, ns: str | None, settings: DataplaneSettings | None = None, node: str | None = None
) -> Dataplane:
    """The dataplane of registered mode `mode` (harness.modes) programming namespace `ns`.

    node: the model node this dataplane is (its endpoints are the local ones; only modes that
    program by locality, `ModeSpec.by_node`, use it: IPVS's KUBE-LOOP-BACK). None counts every
    endpoint as local. An unknown mode raises UnknownModeError (a ValueError).
    """
    spec = modes.mode(mode)
    settings = settings or DataplaneSettings()
    cls = spec.dataplane_class()
    return cls(ns, settings, node=node) if spec.by_node else cls(ns, settings)


def render(mode: str, services: Sequence[Service], settings: DataplaneSettings | None = None) -> str:
    """What `mode` would program for `services`, in the tool's own input format."""
    return make_dataplane(mode, None, settings).render(services)


__all__ = ["Change", "Dataplane", "DataplaneSettings", "MODES", "make_dataplane", "render"]
