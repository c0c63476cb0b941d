"""Cluster preflight: permissions, kube-proxy the kubeadm way, current mode, nodes and kernels.

Reads only; nothing on the cluster is changed here. Every problem is a one-line ClusterError.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from harness.cluster import (
    ANN_MODIFIED,
    KP_KEY,
    KP_NAME,
    KP_NAMESPACE,
    PAUSE_KEY,
    ClusterError,
    kubeproxy_config as kpc,
)
from harness.cluster.kube import Connection, Rest, api_error

NOT_KUBEADM = "this cluster's kube-proxy is not configured the kubeadm way"
PREFLIGHT_NS = "kpbench-preflight"  # stands for the run's namespace in access reviews (not created)

# (verb, API group, resource, subresource, namespace: "run" | "kube-system" | None, name)
PERMISSIONS: tuple[tuple[str, str, str, str, str | None, str], ...] = (
    ("create", "", "namespaces", "", None, ""),
    ("delete", "", "namespaces", "", None, ""),
    ("list", "", "namespaces", "", None, ""),
    ("create", "", "services", "", "run", ""),
    ("delete", "", "services", "", "run", ""),
    ("list", "", "services", "", "run", ""),
    ("create", "discovery.k8s.io", "endpointslices", "", "run", ""),
    ("delete", "discovery.k8s.io", "endpointslices", "", "run", ""),
    ("update", "discovery.k8s.io", "endpointslices", "", "run", ""),
    ("get", "", "configmaps", "", "kube-system", KP_NAME),
    ("update", "", "configmaps", "", "kube-system", KP_NAME),
    ("patch", "", "configmaps", "", "kube-system", KP_NAME),
    ("get", "apps", "daemonsets", "", "kube-system", KP_NAME),
    ("patch", "apps", "daemonsets", "", "kube-system", KP_NAME),
    ("create", "apps", "deployments", "", "run", ""),
    ("create", "batch", "jobs", "", "run", ""),
    ("get", "batch", "jobs", "", "run", ""),
    ("delete", "batch", "jobs", "", "run", ""),
    ("create", "", "pods", "", "run", ""),
    ("list", "", "pods", "", "run", ""),
    ("list", "", "pods", "", "kube-system", ""),
    ("create", "", "pods", "exec", "run", ""),
    ("get", "", "pods", "log", "run", ""),  # the locust workers' raw requests
    ("create", "", "configmaps", "", "run", ""),  # the locust targets
    ("list", "", "nodes", "", None, ""),
    ("get", "", "nodes", "proxy", None, ""),
)


@dataclass
class NodeInfo:
    name: str
    kernel: str = ""
    kubelet: str = ""
    os_image: str = ""
    internal_ip: str = ""
    ready: bool = False
    control_plane: bool = False
    proxy_mode: str | None = None  # what /proxyMode answered through the node proxy, None: not read
    proxy_mode_error: str = ""


@dataclass
class KubeProxyInfo:
    config_text: str
    doc: dict
    mode: str  # effective ("" -> iptables)
    raw_mode: str
    image: str
    binary: str
    container: str
    cm_resource_version: str
    cm_annotations: dict = field(default_factory=dict)
    ds_node_selector: dict = field(default_factory=dict)
    ds_desired: int = 0

    @property
    def metrics_loopback(self) -> bool:
        return kpc.metrics_on_loopback(self.doc)


@dataclass
class PreflightReport:
    conn_where: str
    server_version: str
    kube_proxy: KubeProxyInfo
    nodes: list[NodeInfo]
    permissions_checked: int

    def node_modes(self) -> dict[str, str]:
        return {n.name: n.proxy_mode for n in self.nodes if n.proxy_mode}

    def lines(self) -> list[str]:
        kp = self.kube_proxy
        out = [
            f"cluster: {self.conn_where}, Kubernetes {self.server_version}",
            f"permissions: all {self.permissions_checked} access reviews allowed",
            f"kube-proxy: DaemonSet {KP_NAMESPACE}/{KP_NAME} image {kp.image} ({kp.ds_desired} pods), "
            f"ConfigMap {KP_NAMESPACE}/{KP_NAME} {KP_KEY}: mode {kp.raw_mode or '(empty)'!r} -> runs {kp.mode}",
        ]
        read = self.node_modes()
        if read:
            out.append(
                "node /proxyMode (via the API server's node proxy): "
                + ", ".join(f"{k}={v}" for k, v in sorted(read.items()))
            )
        else:
            why = next((n.proxy_mode_error for n in self.nodes if n.proxy_mode_error), "not tried")
            out.append(
                f"node /proxyMode: not reachable through the node proxy ({why}); the mode comes from "
                "the ConfigMap"
            )
        out.append(f"nodes ({len(self.nodes)}):")
        for n in self.nodes:
            out.append(
                f"  {n.name:<30} kernel {n.kernel or '?':<24} kubelet {n.kubelet or '?':<10} "
                f"{'Ready' if n.ready else 'NotReady'}{' control-plane' if n.control_plane else ''}"
            )
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kube_proxy"].pop("doc", None)
        return d


# ------------------------------------------------------------------------------------------ checks


def check_permissions(rest: Rest, conn: Connection, namespace: str = PREFLIGHT_NS) -> int:
    """SelfSubjectAccessReview for every verb the run needs; a ClusterError naming what is missing."""

    def review(p) -> tuple[tuple, bool, str]:
        verb, group, resource, sub, ns, name = p
        ra = {"verb": verb, "group": group, "resource": resource}
        if sub:
            ra["subresource"] = sub
        if ns:
            ra["namespace"] = namespace if ns == "run" else ns
        if name:
            ra["name"] = name
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": ra},
        }
        try:
            st = rest.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body).get("status", {})
        except Exception as e:  # noqa: BLE001 - ApiException or transport error: reported as this permission's failure
            return p, False, f"review failed: {api_error(e)}"
        return p, bool(st.get("allowed")), st.get("reason", "")

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(review, PERMISSIONS))
    missing = [p for p, ok, _ in results if not ok]
    if missing:
        parts = []
        for verb, group, resource, sub, ns, name in missing:
            what = resource + (f".{group}" if group else "") + (f"/{sub}" if sub else "")
            where = f" {name}" if name else ""
            scope = f" in {namespace if ns == 'run' else ns}" if ns else ""
            parts.append(f"{verb} {what}{where}{scope}")
        shown = "; ".join(parts[:6]) + (f"; and {len(parts) - 6} more" if len(parts) > 6 else "")
        raise ClusterError(
            f"{conn.where()} lacks permissions the cluster target needs ({shown}): use an admin "
            "context (kubeadm's /etc/kubernetes/admin.conf) or grant them; nothing was changed"
        )
    return len(results)


def read_kube_proxy(rest: Rest) -> KubeProxyInfo:
    """The kubeadm layout: DaemonSet kube-system/kube-proxy using ConfigMap kube-system/kube-proxy."""
    cm_path = f"/api/v1/namespaces/{KP_NAMESPACE}/configmaps/{KP_NAME}"
    ds_path = f"/apis/apps/v1/namespaces/{KP_NAMESPACE}/daemonsets/{KP_NAME}"
    try:
        cm = rest.get_or_none(cm_path)
        ds = rest.get_or_none(ds_path)
    except Exception as e:  # noqa: BLE001 - ApiException or transport error -> one-line ClusterError
        raise ClusterError(
            f"reading kube-proxy's ConfigMap/DaemonSet in {KP_NAMESPACE} failed ({api_error(e)}): "
            "check the context's permissions"
        ) from None
    if cm is None and ds is None:
        raise ClusterError(
            f"{NOT_KUBEADM}: neither ConfigMap nor DaemonSet {KP_NAMESPACE}/{KP_NAME} exists "
            "(kube-proxy may be replaced, e.g. by Cilium, or run as static pods); the cluster "
            "target needs a kubeadm-style kube-proxy, or use the lab target"
        )
    if cm is None:
        raise ClusterError(
            f"{NOT_KUBEADM}: DaemonSet {KP_NAMESPACE}/{KP_NAME} exists but ConfigMap "
            f"{KP_NAMESPACE}/{KP_NAME} does not; the cluster target switches modes by editing "
            f"that ConfigMap's {KP_KEY}, so it cannot run here"
        )
    if ds is None:
        raise ClusterError(
            f"{NOT_KUBEADM}: ConfigMap {KP_NAMESPACE}/{KP_NAME} exists but DaemonSet "
            f"{KP_NAMESPACE}/{KP_NAME} does not (kube-proxy may run as static pods or a "
            "differently named DaemonSet); the cluster target needs kubeadm's DaemonSet"
        )
    data = cm.get("data") or {}
    if KP_KEY not in data:
        raise ClusterError(
            f"{NOT_KUBEADM}: ConfigMap {KP_NAMESPACE}/{KP_NAME} has keys "
            f"{sorted(data) or 'none'} but no {KP_KEY}; the cluster target needs the "
            "KubeProxyConfiguration there"
        )
    doc = kpc.parse(data[KP_KEY])
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or []
    c = next((c for c in containers if c.get("name") == KP_NAME), containers[0] if containers else None)
    if c is None:
        raise ClusterError(f"{NOT_KUBEADM}: DaemonSet {KP_NAMESPACE}/{KP_NAME} has no containers")
    mounts_cm = any((v.get("configMap") or {}).get("name") == KP_NAME for v in spec.get("volumes") or [])
    argv = list(c.get("command") or []) + list(c.get("args") or [])
    if not mounts_cm or not any(a.startswith("--config") for a in argv):
        raise ClusterError(
            f"{NOT_KUBEADM}: DaemonSet {KP_NAMESPACE}/{KP_NAME} does not run kube-proxy with "
            f"--config from ConfigMap {KP_NAME} (command {' '.join(argv)[:120]!r}); editing "
            f"{KP_KEY} would not change its mode"
        )
    binary = next(
        (a for a in (c.get("command") or []) if a.endswith("kube-proxy")), "/usr/local/bin/kube-proxy"
    )
    node_selector = dict(spec.get("nodeSelector") or {})
    ann = dict((cm.get("metadata") or {}).get("annotations") or {})
    return KubeProxyInfo(
        config_text=data[KP_KEY],
        doc=doc,
        mode=kpc.configured_mode(doc),
        raw_mode=kpc.raw_mode(doc),
        image=c.get("image", ""),
        binary=binary,
        container=c.get("name", ""),
        cm_resource_version=(cm.get("metadata") or {}).get("resourceVersion", ""),
        cm_annotations=ann,
        ds_node_selector=node_selector,
        ds_desired=int((ds.get("status") or {}).get("desiredNumberScheduled") or 0),
    )


def check_not_owned(kp: KubeProxyInfo) -> None:
    """A ConfigMap or DaemonSet still marked by an earlier kpbench run means a restore is pending."""
    owner = kp.cm_annotations.get(ANN_MODIFIED)
    if owner:
        raise ClusterError(
            f"ConfigMap {KP_NAMESPACE}/{KP_NAME} was changed by kpbench run {owner} and not put "
            f"back: run `kpbench restore results/<run folder of {owner}>` first"
        )
    if PAUSE_KEY in kp.ds_node_selector:
        raise ClusterError(
            f"DaemonSet {KP_NAMESPACE}/{KP_NAME} is paused by a kpbench run (nodeSelector "
            f"{PAUSE_KEY}): run `kpbench restore RUN_DIR` for that run first"
        )


def list_nodes(rest: Rest) -> list[NodeInfo]:
    try:
        items = rest.get("/api/v1/nodes").get("items") or []
    except Exception as e:  # noqa: BLE001 - ApiException or transport error -> one-line ClusterError
        raise ClusterError(
            f"listing nodes failed ({api_error(e)}): check the context's permissions"
        ) from None
    out = []
    for it in items:
        meta, st = it.get("metadata") or {}, it.get("status") or {}
        info = st.get("nodeInfo") or {}
        addrs = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
        )
        lab = meta.get("labels") or {}
        out.append(
            NodeInfo(
                name=meta.get("name", ""),
                kernel=info.get("kernelVersion", ""),
                kubelet=info.get("kubeletVersion", ""),
                os_image=info.get("osImage", ""),
                internal_ip=addrs.get("InternalIP", ""),
                ready=ready,
                control_plane="node-role.kubernetes.io/control-plane" in lab,
            )
        )
    return sorted(out, key=lambda n: n.name)


def node_proxy_path(node: str, port: int, path: str) -> str:
    """The API server's node proxy to an arbitrary port: /api/v1/nodes/<node>:<port>/proxy/<path>."""
    return f"/api/v1/nodes/{node}:{port}/proxy/{path.lstrip('/')}"


def read_node_mode(rest: Rest, node: str, port: int = 10249, timeout: float = 3.0) -> tuple[str | None, str]:
    """kube-proxy's /proxyMode on `node` through the API server -> (mode or None, error)."""
    try:
        text = rest.get(node_proxy_path(node, port, "proxyMode"), raw=True, timeout=(timeout, timeout))
    except Exception as e:  # noqa: BLE001 - the node's kube-proxy unreachable: returned as this node's error
        return None, api_error(e)
    mode = text.strip()
    return (mode, "") if mode in kpc.MODES else (None, f"unexpected answer {mode[:40]!r}")


def read_node_modes(rest: Rest, nodes: list[NodeInfo], port: int) -> None:
    if not nodes:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as ex:
        for n, (mode, err) in zip(
            nodes, ex.map(lambda n: read_node_mode(rest, n.name, port), nodes), strict=True
        ):
            n.proxy_mode, n.proxy_mode_error = mode, err


def run_preflight(conn: Connection, *, server_version: str = "", read_modes: bool = True) -> PreflightReport:
    rest = Rest(conn.api)
    n_perm = check_permissions(rest, conn)
    kp = read_kube_proxy(rest)
    check_not_owned(kp)
    nodes = list_nodes(rest)
    if not nodes:
        raise ClusterError(f"{conn.where()}: the cluster has no nodes; the cluster target measures on nodes")
    if read_modes:
        read_node_modes(rest, nodes, kpc.metrics_port(kp.doc))
    seen = {n.proxy_mode for n in nodes if n.proxy_mode}
    if seen and seen != {kp.mode}:
        odd = ", ".join(f"{n.name}={n.proxy_mode}" for n in nodes if n.proxy_mode and n.proxy_mode != kp.mode)
        raise ClusterError(
            f"kube-proxy runs another mode than its ConfigMap says ({kp.mode}) on {odd[:200]}: "
            f"finish that change first (kubectl -n {KP_NAMESPACE} rollout restart ds/{KP_NAME})"
        )
    return PreflightReport(
        conn_where=conn.where(),
        server_version=server_version,
        kube_proxy=kp,
        nodes=nodes,
        permissions_checked=n_perm,
    )


def planned_changes(
    report: PreflightReport, modes: list[str], counts: list[int], opts: Any, endpoints: int | None = None
) -> list[str]:
    """What the run will do to the cluster, in the order it happens, for the --yes prompt
    (`endpoints`: the scenario's endpoints per Service, which sets the backend pods)."""
    kp = report.kube_proxy
    found = kp.mode
    lines = [
        f"create namespace kpbench-<run id> (label kpbench.io/run=<run id>) with a backend Deployment "
        f"({opts.backend_replicas_for(endpoints)} pods, image {opts.image}), a privileged host-network probe pod "
        f"on {', '.join(opts.probe_nodes_for(report.nodes))}, and up to {max(counts)} Services "
        f"({'selector-less, with EndpointSlices' if opts.endpoints_via == 'slices' else 'with selectors'}) "
        f"created at {opts.qps:g}/s, burst {opts.burst}"
    ]
    # `modes`: the mode of every point in run order; the first point always writes our config
    seq = [found] + [m for i, m in enumerate(modes) if i == 0 or m != modes[i - 1]] + [found]
    switches = list(pairwise(seq))
    after = kpc.with_mode(kp.doc, modes[0], opts.sync())
    fields = ", ".join(c for c in kpc.describe_change(kp.doc, after)) or "nothing"
    distinct = list(dict.fromkeys(modes))
    lines.append(
        f"edit ConfigMap {KP_NAMESPACE}/{KP_NAME} {KP_KEY} ({fields}; likewise for "
        f"{', '.join(distinct)}) and restart DaemonSet {KP_NAMESPACE}/{KP_NAME} on all "
        f"{len(report.nodes)} nodes {len(switches)} times (points are interleaved by mode; the last "
        f"restart puts the original back)"
    )
    always = getattr(opts, "cleanup", "auto") == "always"
    if always or any(kpc.needs_cleanup(a, b) for a, b in switches):
        lines.append(
            f"{'at every mode switch' if always else 'between iptables and ipvs'}: take kube-proxy off every node (DaemonSet nodeSelector "
            f"{PAUSE_KEY}), run `kube-proxy --cleanup` as a privileged Job on each node (this flushes "
            f"EVERY IPVS virtual server and kube-proxy's iptables/nftables state; Services are not "
            f"served until kube-proxy is back), then bring it back"
        )
    from harness.cluster.nodecheck import features_to_check

    need = features_to_check(list(dict.fromkeys(modes)))
    if need:
        lines.insert(
            0,
            f"first, before kube-proxy is touched: a pod on every node checks the kernel has "
            f"{', '.join(need)} ({', '.join(m for ms in need.values() for m in ms)} mode); a node without "
            "refuses the run",
        )
    lines.append(
        f"per point with load enabled: locust in distributed mode (a master and {opts.locust_workers} "
        "workers as Jobs, deleted after each load phase) against the Services' ClusterIPs"
    )
    lines.append(
        f"at the end, also on failure or Ctrl-C: put {KP_KEY} back exactly as found (mode {found}), "
        f"restart kube-proxy, delete everything labelled kpbench.io/run=<run id>; the original is saved "
        f"in RUN/cluster-restore.json first (`kpbench restore RUN` finishes it after a crash)"
    )
    return lines
