"""kube-proxy as the local target runs it: started in a node namespace with a rendered
KubeProxyConfiguration, `kube-proxy --cleanup`, and its /proxyMode and /metrics."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.k8s import kubeproxy_config
from harness.k8s.kubeproxy_config import HEALTHZ_PORT, METRICS_PORT
from harness.k8s.metrics import parse_metrics
from harness.lab import netns as lab_netns
from harness.samples import PointContext
from harness.targets.local_binaries import find_binaries
from harness.targets.local_procs import LocalClusterError, Proc, http_get, spawn

__all__ = [
    "HEALTHZ_PORT",
    "METRICS_PORT",
    "KubeProxy",
    "kube_proxy_cleanup",
    "metric_rows",
    "scrape_metrics",
    "start_kube_proxy",
]


@dataclass
class KubeProxy:
    proc: Proc
    mode: str
    node_name: str
    netns: str
    config_path: Path
    metrics_port: int = METRICS_PORT

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self) -> int | None:
        return self.proc.stop()


def start_kube_proxy(
    kubeconfig: str | Path,
    mode: str,
    node_name: str,
    netns: str,
    config_path: str | Path,
    *,
    binary: str | Path | None = None,
    log_path: str | Path | None = None,
    wait_ready: float = 60.0,
    env: dict | None = None,
    **config,
) -> KubeProxy:
    """Render a KubeProxyConfiguration into `config_path` and run kube-proxy inside `netns`.

    Waits until /proxyMode answers on the metrics port (or `wait_ready` is 0); a kube-proxy
    that exits meanwhile raises LocalClusterError with its log tail.
    """
    if not netns or not netns.startswith(lab_netns.PREFIX):
        raise LocalClusterError(f"kube-proxy runs only inside a {lab_netns.PREFIX}* namespace, not {netns!r}")
    binary = Path(binary) if binary else find_binaries().kube_proxy
    config_path = Path(config_path)
    cfg = kubeproxy_config.render(kubeconfig=kubeconfig, mode=mode, node_name=node_name, **config)
    config_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    log = Path(log_path) if log_path else config_path.with_suffix(".log")
    # env: e.g. a PATH whose iptables* are one backend's (legacy or nft) binaries
    proc = spawn(f"kube-proxy-{node_name}", [str(binary), f"--config={config_path}"], netns, log, env=env)
    kp = KubeProxy(
        proc=proc,
        mode=mode,
        node_name=node_name,
        netns=netns,
        config_path=config_path,
        metrics_port=int(cfg["metricsBindAddress"].rsplit(":", 1)[1]),
    )
    if wait_ready:
        deadline = time.monotonic() + wait_ready
        while True:
            if not proc.alive():
                raise LocalClusterError(
                    f"kube-proxy ({mode}) in {netns} exited with {proc.popen.returncode}:\n{proc.failure()}"
                )
            try:
                status, body = http_get(netns, "127.0.0.1", kp.metrics_port, "/proxyMode", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                proc.stop()
                raise LocalClusterError(
                    f"kube-proxy ({mode}) in {netns}: /proxyMode not answering after "
                    f"{wait_ready:.0f} s:\n{proc.failure()}"
                )
            time.sleep(0.2)
    return kp


def kube_proxy_cleanup(
    netns: str, binary: str | Path | None = None, timeout: float = 300, path: str | None = None, log=None
) -> str:
    """`kube-proxy --cleanup` inside `netns` (removes iptables, ipvs and nftables state there).

    `path`: the PATH kube-proxy runs with (e.g. one iptables backend's binaries). After IPVS mode
    the first call exits 1 although it cleans up: its iptables pass runs first and cannot delete
    KUBE-MARK-MASQ while IPVS mode's KUBE-LOAD-BALANCER still jumps to it, then its IPVS pass
    removes the rest. So a failed call is repeated once (each failure goes to `log(message)`);
    the second must succeed.
    """
    if not netns or not netns.startswith(lab_netns.PREFIX):
        raise LocalClusterError(f"kube-proxy --cleanup runs only inside a {lab_netns.PREFIX}* namespace")
    binary = Path(binary) if binary else find_binaries().kube_proxy
    argv = (["env", f"PATH={path}"] if path else []) + [str(binary), "--cleanup"]
    for attempt in (1, 2):
        p = lab_netns.run(netns, argv, check=False, timeout=timeout)
        if p.returncode == 0:
            return p.stderr
        if log:
            log(
                f"kube-proxy --cleanup in {netns} (attempt {attempt}): exit {p.returncode}:\n{p.stderr[-6000:]}"
            )
    errors = [line for line in p.stderr.splitlines() if line.startswith("E")] or p.stderr.strip().splitlines()
    raise LocalClusterError(
        f"kube-proxy --cleanup in {netns} failed twice (exit {p.returncode}): {' | '.join(errors[:3])[-900:]}"
    )


def scrape_metrics(
    netns: str | None, port: int = METRICS_PORT, host: str = "127.0.0.1", timeout: float = 5.0
) -> dict[str, Any]:
    """kube-proxy's /proxyMode and /metrics, read from inside `netns`.

    Returns {"proxy_mode": str, "metrics": {name{labels}: value}, "raw": text}.
    """
    status, mode = http_get(netns, host, port, "/proxyMode", timeout=timeout)
    if status != 200:
        raise LocalClusterError(f"/proxyMode on {host}:{port} in {netns}: HTTP {status}")
    status, body = http_get(netns, host, port, "/metrics", timeout=timeout)
    if status != 200:
        raise LocalClusterError(f"/metrics on {host}:{port} in {netns}: HTTP {status}")
    text = body.decode(errors="replace")
    return {"proxy_mode": mode.decode().strip(), "metrics": parse_metrics(text), "raw": text}


_KP_PREFIXES = (
    "kubeproxy_sync_proxy_rules",
    "kubeproxy_network_programming",
    "kubeproxy_sync_full_proxy_rules",
    "kubeproxy_sync_partial_proxy_rules",
)
_LABELS = re.compile(r'(\w+)="([^"]*)"')


def metric_rows(ctx: PointContext, metrics: dict[str, float]) -> list[dict]:
    """kube-proxy's metrics as rows `kp_<name without kubeproxy_>`: histograms as _sum (s),
    _count and _bucket (count, tag path="le=<bound>"), counters and gauges as count (tag path=<table>
    for the iptables rule totals). Timestamps are left out."""
    rows = []
    for key, value in sorted(metrics.items()):
        name, _, labels = key.partition("{")
        if not name.startswith(_KP_PREFIXES) or "timestamp" in name:
            continue
        lab = dict(_LABELS.findall(labels))
        if lab.get("ip_family", "IPv4") != "IPv4":
            continue  # kube-proxy runs dual-stack here; the Services are IPv4
        path = ""
        if name.endswith("_bucket"):
            path = f"le={lab.get('le', '')}"
        elif "table" in lab:
            path = lab["table"]
        rows.append(ctx.row("kp_" + name[len("kubeproxy_") :], value, path=path))  # unit: harness.metrics
    return rows
