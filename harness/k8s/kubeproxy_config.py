"""The one KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) writer: `render` makes the
local target's config from scratch, `set_mode` points an existing one (the cluster target's
kubeadm ConfigMap) at a mode with the harness's sync settings. Pure functions over dicts."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.modes import MODES, SectionOptions, all_modes

DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
METRICS_PORT = 10249
HEALTHZ_PORT = 10256


@dataclass(frozen=True)
class SyncSettings:
    """Sync settings the harness sets for the measured mode (None: leave as found)."""

    # program every change at once (what the sync latency measures): "1ms", as kube-proxy's config
    # defaulting turns the active mode's minSyncPeriod 0 into 1s (checked with --write-config-to, v1.37)
    min_sync_period: str | None = "1ms"
    sync_period: str | None = None
    metrics_bind_address: str | None = "0.0.0.0:10249"  # so the API server's node proxy can scrape
    ipvs_scheduler: str | None = None


def _apply(section: dict[str, Any], mode: str, sync: SyncSettings) -> None:
    """`sync` into one mode's section (syncPeriod, minSyncPeriod; ipvs: scheduler)."""
    if sync.min_sync_period is not None:
        section["minSyncPeriod"] = sync.min_sync_period
    if sync.sync_period is not None:
        section["syncPeriod"] = sync.sync_period
    if all_modes()[mode].takes_scheduler and sync.ipvs_scheduler is not None:
        section["scheduler"] = sync.ipvs_scheduler


def set_mode(doc: dict[str, Any], mode: str, sync: SyncSettings = SyncSettings()) -> dict[str, Any]:
    """A copy of `doc` set to run `mode` with `sync` applied to that mode's section."""
    out = copy.deepcopy(doc)
    out["mode"] = mode
    section = out.get(mode)
    if not isinstance(section, dict):
        section = {}
        out[mode] = section
    _apply(section, mode, sync)
    if sync.metrics_bind_address is not None:
        out["metricsBindAddress"] = sync.metrics_bind_address
    return out


def render(
    *,
    kubeconfig: str | Path,
    mode: str,
    node_name: str,
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
    sync_period: str = "30s",
    min_sync_period: str = "1s",
    ipvs_scheduler: str = "rr",
    metrics_port: int = METRICS_PORT,
    healthz_port: int = HEALTHZ_PORT,
    masquerade_all: bool = False,
    strict_arp: bool = False,
    node_port_addresses: Sequence[str] | None = None,
    verbosity: int = 2,
    extra: dict | None = None,
) -> dict:
    """A whole KubeProxyConfiguration for a kube-proxy the harness runs, as a dict (every mode's
    section gets the sync settings).

    Conntrack sysctls are left alone (maxPerCore 0 and zero timeouts mean "do not set"), so a
    kube-proxy in a lab namespace never writes the host's global nf_conntrack_max.
    """
    if mode not in MODES:
        raise ValueError(f"kube-proxy mode {mode!r}: use {', '.join(MODES[:-1])} or {MODES[-1]}")
    options = SectionOptions(
        sync_period=sync_period,
        min_sync_period=min_sync_period,
        masquerade_all=masquerade_all,
        strict_arp=strict_arp,
        ipvs_scheduler=ipvs_scheduler,
    )
    cfg: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {
            "kubeconfig": str(kubeconfig),
            "qps": 50,
            "burst": 100,
            "contentType": "application/vnd.kubernetes.protobuf",
        },
        "hostnameOverride": node_name,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": f"0.0.0.0:{healthz_port}",
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "oomScoreAdj": 0,
        "configSyncPeriod": "15m",
        **{name: spec.kube_proxy_section(options) for name, spec in all_modes().items()},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        "logging": {"verbosity": verbosity},
    }
    sync = SyncSettings(
        min_sync_period=min_sync_period,
        sync_period=sync_period,
        metrics_bind_address=f"0.0.0.0:{metrics_port}",
        ipvs_scheduler=ipvs_scheduler,
    )
    cfg = set_mode(cfg, mode, sync)
    if node_port_addresses is not None:
        cfg["nodePortAddresses"] = list(node_port_addresses)
    if extra:
        cfg.update(extra)
    return cfg
