"""kube-proxy's KubeProxyConfiguration as kubeadm stores it (ConfigMap kube-system/kube-proxy, key
config.conf): read the mode, write a new mode and sync settings, decide whether a cleanup is needed.

Pure functions over text and dicts: no API calls here.
"""

from __future__ import annotations

from typing import Any

import yaml

from harness.cluster import KP_KEY, KP_NAME, KP_NAMESPACE, ClusterError
from harness.k8s.kubeproxy_config import SyncSettings, set_mode
from harness.modes import MODES, all_modes

KIND = "KubeProxyConfiguration"
# "iptables-based" modes: kube-proxy's startup cleanup removes nothing when switching between them
IPTABLES_BASED = frozenset(name for name, spec in all_modes().items() if spec.iptables_based)


def parse(text: str, where: str = f"{KP_NAMESPACE}/{KP_NAME} {KP_KEY}") -> dict[str, Any]:
    """config.conf -> dict; a one-line ClusterError when it is not a KubeProxyConfiguration."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClusterError(
            f"ConfigMap {where} is not valid YAML ({getattr(e, 'problem', e)}): "
            "this cluster's kube-proxy is not configured the kubeadm way; "
            "fix the ConfigMap or use the lab target"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        found = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise ClusterError(
            f"ConfigMap {where} holds {found!r}, not a {KIND}: this cluster's kube-proxy "
            "is not configured the kubeadm way; the cluster target needs it"
        )
    return doc


def configured_mode(doc: dict[str, Any]) -> str:
    """The mode kube-proxy will run: "" (or absent) means iptables on Linux."""
    mode = (doc.get("mode") or "").strip()
    if mode == "":
        return "iptables"
    if mode not in MODES:
        raise ClusterError(
            f"kube-proxy config.conf has mode {mode!r}: the cluster target only handles {', '.join(MODES)}"
        )
    return mode


def raw_mode(doc: dict[str, Any]) -> str:
    """The mode field exactly as written ("" when absent)."""
    return doc.get("mode") or ""


def with_mode(doc: dict[str, Any], mode: str, sync: SyncSettings = SyncSettings()) -> dict[str, Any]:
    """A copy of `doc` set to run `mode` with `sync` applied to that mode's section."""
    if mode not in MODES:
        raise ClusterError(f"unknown kube-proxy mode {mode!r}: expected one of {', '.join(MODES)}")
    return set_mode(doc, mode, sync)


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def needs_cleanup(from_mode: str, to_mode: str) -> bool:
    """True between iptables and ipvs: neither removes the other's state when it starts (D.3).

    nftables mode removes iptables/ipvs leftovers at startup, and iptables/ipvs remove the
    nftables tables, so those switches need no separate cleanup.
    """
    return from_mode != to_mode and {from_mode, to_mode} <= IPTABLES_BASED


def metrics_port(doc: dict[str, Any]) -> int:
    addr = str(doc.get("metricsBindAddress") or "127.0.0.1:10249")
    try:
        return int(addr.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 10249


def metrics_on_loopback(doc: dict[str, Any]) -> bool:
    """True when the API server's node proxy cannot reach the metrics port (the default)."""
    addr = str(doc.get("metricsBindAddress") or "127.0.0.1:10249")
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def describe_change(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable field changes between two configs, e.g. "mode: '' -> 'ipvs'"."""
    changes: list[str] = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        elif a != b:
            changes.append(f"{path}: {a!r} -> {b!r}")

    walk(before, after, "")
    return changes
