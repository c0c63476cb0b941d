"""kube-proxy deployed exactly as kubeadm deploys it: the DaemonSet and ConfigMap templates of
cmd/kubeadm/app/phases/addons/proxy/manifests.go of the cluster's own release (read from the
k8s.io/kubernetes module zip `make kube` downloaded), the ServiceAccount, ClusterRoleBinding,
Role and RoleBinding kubeadm's proxy.go creates, and a KubeProxyConfiguration written as kubeadm
writes it (every field, mostly zero values) with what this machine needs: conntrack.maxPerCore 0
(a non-init namespace cannot set nf_conntrack_max) and oomScoreAdj 0 (lowering it is refused)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import yaml

from harness.cluster import KP_KEY, KP_NAME, KP_NAMESPACE
from harness.errors import UserError
from harness.targets.local_binaries import CACHE_ROOT

MOD_DOWNLOAD = CACHE_ROOT / "go" / "mod" / "cache" / "download"  # kube/build.sh's GOMODCACHE
MANIFESTS = "cmd/kubeadm/app/phases/addons/proxy/manifests.go"
CONFIGMAP_TEMPLATE = "KubeProxyConfigMap19"
DAEMONSET_TEMPLATE = "KubeProxyDaemonSet19"
NODE_PROXIER_BINDING = "kubeadm:node-proxier"  # kubeadm constants.KubeProxyClusterRoleBindingName
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
_PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def module_zip(kube_version: str) -> Path:
    return MOD_DOWNLOAD / "k8s.io" / "kubernetes" / "@v" / f"{kube_version}.zip"


def kubeadm_templates(kube_version: str) -> dict[str, str]:
    """The raw-string constants of kubeadm's proxy manifests.go in release `kube_version`."""
    z = module_zip(kube_version)
    try:
        with zipfile.ZipFile(z) as f:
            source = f.read(f"k8s.io/kubernetes@{kube_version}/{MANIFESTS}").decode()
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(
            f"kubeadm's kube-proxy manifests of {kube_version} are not readable from {z} ({e}): "
            f"run `make cluster-bins KUBE_VERSION={kube_version}` (it downloads the module)"
        ) from None
    found = dict(re.findall(r"(\w+)\s*=\s*`([^`]*)`", source))
    for name in (CONFIGMAP_TEMPLATE, DAEMONSET_TEMPLATE):
        if name not in found:
            raise UserError(f"{MANIFESTS} of {kube_version} has no {name}: this release is not supported")
    return found


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute Go template fields `{{ .Name }}` (kubeadm's templates use nothing else)."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise UserError(f"kubeadm template field .{m.group(1)} has no value (unsupported release?)")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(sub, template)


def proxy_config(cluster_cidr: str) -> dict[str, Any]:
    """KubeProxyConfiguration as `kubeadm init` writes it into config.conf, adapted to this machine."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "bindAddress": "0.0.0.0",
        "bindAddressHardFail": False,
        "clientConnection": {
            "acceptContentTypes": "",
            "burst": 0,
            "contentType": "",
            "kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf",
            "qps": 0,
        },
        "clusterCIDR": cluster_cidr,
        "configSyncPeriod": "0s",
        "conntrack": {
            "maxPerCore": 0,  # leave nf_conntrack_max alone: a node namespace may not set it
            "min": None,
            "tcpBeLiberal": False,
            "tcpCloseWaitTimeout": None,
            "tcpEstablishedTimeout": None,
            "udpStreamTimeout": "0s",
            "udpTimeout": "0s",
        },
        "detectLocal": {"bridgeInterface": "", "interfaceNamePrefix": ""},
        "detectLocalMode": "",
        "enableProfiling": False,
        "healthzBindAddress": "",
        "hostnameOverride": "",
        "iptables": {
            "localhostNodePorts": None,
            "masqueradeAll": False,
            "masqueradeBit": None,
            "minSyncPeriod": "0s",
            "syncPeriod": "0s",
        },
        "ipvs": {
            "excludeCIDRs": None,
            "minSyncPeriod": "0s",
            "scheduler": "",
            "strictARP": False,
            "syncPeriod": "0s",
            "tcpFinTimeout": "0s",
            "tcpTimeout": "0s",
            "udpTimeout": "0s",
        },
        "logging": {
            "flushFrequency": 0,
            "options": {"json": {"infoBufferSize": "0"}, "text": {"infoBufferSize": "0"}},
            "verbosity": 0,
        },
        "metricsBindAddress": "",
        "mode": "",
        "nftables": {
            "masqueradeAll": False,
            "masqueradeBit": None,
            "minSyncPeriod": "0s",
            "syncPeriod": "0s",
        },
        "nodePortAddresses": None,
        "oomScoreAdj": 0,  # CAP_SYS_RESOURCE is missing here: lowering oom_score_adj is refused
        "portRange": "",
        "showHiddenMetricsForVersion": "",
        "winkernel": {
            "enableDSR": False,
            "forwardHealthCheckVip": False,
            "networkName": "",
            "rootHnsEndpointName": "",
            "sourceVip": "",
        },
    }


def render(kube_version: str, *, server: str, image: str, cluster_cidr: str) -> list[dict[str, Any]]:
    """Every object kubeadm creates for kube-proxy, in creation order."""
    t = kubeadm_templates(kube_version)
    config = yaml.safe_dump(proxy_config(cluster_cidr), default_flow_style=False, sort_keys=True)
    values = {
        "ProxyConfigMap": KP_NAME,
        "ProxyConfigMapKey": KP_KEY,
        "ControlPlaneEndpoint": server,
        "ProxyConfig": "".join(f"    {line}\n" for line in config.splitlines()).rstrip("\n"),
        "Image": image,
    }
    cm = yaml.safe_load(fill(t[CONFIGMAP_TEMPLATE], values))
    ds = yaml.safe_load(fill(t[DAEMONSET_TEMPLATE], values))
    rbac = "rbac.authorization.k8s.io"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": KP_NAME, "namespace": KP_NAMESPACE},
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NODE_PROXIER_BINDING},
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:node-proxier"},
            "subjects": [{"kind": "ServiceAccount", "name": KP_NAME, "namespace": KP_NAMESPACE}],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": {"name": KP_NAME, "namespace": KP_NAMESPACE},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [KP_NAME], "verbs": ["get"]}
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": {"name": KP_NAME, "namespace": KP_NAMESPACE},
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": KP_NAME},
            "subjects": [{"apiGroup": rbac, "kind": "Group", "name": BOOTSTRAP_GROUP}],
        },
        cm,
        ds,
    ]


_COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}


def collection_path(obj: dict[str, Any]) -> str:
    return _COLLECTIONS[obj["kind"]].format(ns=obj["metadata"].get("namespace", ""))


def apply(rest, objects: list[dict[str, Any]]) -> None:
    """Create the objects (a fresh cluster has none of them)."""
    for obj in objects:
        rest.create(collection_path(obj), obj)
