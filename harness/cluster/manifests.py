"""Rendered manifests (plain dicts, as the API accepts them) for everything a cluster run creates.

Every object carries the run label (kpbench.io/run=<id>) and a role label, lives in the run's own
namespace, and is therefore deleted with it ("everything deleted by label at the end").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from harness.cluster import LABEL_ROLE, LABEL_RUN, run_label_value

DEFAULT_IMAGE = "kpbench:latest"  # built from the repository's Dockerfile (docker build -t kpbench .)
BACKEND_PORT = 8080
SERVICE_PORT = 80
LOCUST_MASTER_PORT = 5557
MAX_ENDPOINTS_PER_SLICE = 100  # what the EndpointSlice controller uses by default
# no docker-link env vars per Service of the namespace: with the run's thousands of Services they
# overflow a container's exec (E2BIG, "argument list too long": cleanup Jobs and locust at 10,000)
NO_SERVICE_LINKS = False
TOLERATE_ALL = [{"operator": "Exists"}]  # run on control-plane and tainted nodes too, as kube-proxy does


def labels(run_id: str, role: str, **extra: str) -> dict[str, str]:
    return {
        LABEL_RUN: run_label_value(run_id),
        LABEL_ROLE: role,
        "app.kubernetes.io/managed-by": "kpbench",
        **extra,
    }


def _meta(name: str, namespace: str | None, run_id: str, role: str, **extra: str) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "labels": labels(run_id, role, **extra)}
    if namespace:
        m["namespace"] = namespace
    return m


def _node_pod_meta(kind: str, namespace: str, run_id: str, role: str, node: str) -> dict[str, Any]:
    """A per-node pod's metadata: named kpbench-KIND-NODE (63 characters at most), labelled with
    its node."""
    return _meta(
        f"kpbench-{kind}-{_dns(node)}"[:63].rstrip("-"),
        namespace,
        run_id,
        role,
        **{"kpbench.io/node": _lv(node)},
    )


def namespace(name: str, run_id: str) -> dict[str, Any]:
    """The run's namespace. Pod Security admission must allow the privileged probe / cleanup pods."""
    meta = _meta(name, None, run_id, "namespace")
    meta["labels"].update(
        {
            "pod-security.kubernetes.io/enforce": "privileged",
            "pod-security.kubernetes.io/warn": "privileged",
            "pod-security.kubernetes.io/audit": "privileged",
        }
    )
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _node_pinned_spec(node: str) -> dict[str, Any]:
    # nodeName bypasses the scheduler (the pod must run on exactly this node, even cordoned ones)
    return {"nodeName": node, "tolerations": TOLERATE_ALL}


def backend_deployment(ns: str, run_id: str, image: str, replicas: int) -> dict[str, Any]:
    """A small backend: `python -m harness.cluster.backend` answers GET / with "<pod> <ip>:<port>",
    the first-line format the probe agent's backend matching expects (as the lab's nginx does)."""
    sel = {LABEL_RUN: run_label_value(run_id), LABEL_ROLE: "backend"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("kpbench-backend", ns, run_id, "backend"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": sel},
            "template": {
                "metadata": {"labels": labels(run_id, "backend")},
                "spec": {
                    "enableServiceLinks": NO_SERVICE_LINKS,
                    "containers": [
                        {
                            "name": "backend",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "python3",
                                "-m",
                                "harness.cluster.backend",
                                "--port",
                                str(BACKEND_PORT),
                            ],
                            "ports": [{"containerPort": BACKEND_PORT, "name": "http"}],
                            "env": [
                                _env_field("POD_NAME", "metadata.name"),
                                _env_field("POD_IP", "status.podIP"),
                            ],
                            "readinessProbe": {"tcpSocket": {"port": BACKEND_PORT}, "periodSeconds": 2},
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                        }
                    ],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    }


def backend_selector(run_id: str) -> dict[str, str]:
    return {LABEL_RUN: run_label_value(run_id), LABEL_ROLE: "backend"}


def _env_field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def service(ns: str, run_id: str, name: str, *, selector: bool) -> dict[str, Any]:
    """A ClusterIP Service; without a selector its endpoints come from our own EndpointSlices."""
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": BACKEND_PORT, "protocol": "TCP"}],
    }
    if selector:
        spec["selector"] = backend_selector(run_id)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns, run_id, "service"),
        "spec": spec,
    }


def endpoint_slices(
    ns: str,
    run_id: str,
    service_name: str,
    endpoints: Sequence[tuple[str, str | None]],
) -> list[dict[str, Any]]:
    """EndpointSlices for a selector-less Service: `endpoints` = [(pod IP, node name or None)].

    managed-by is not the EndpointSlice controller's value, so the controller leaves them alone.
    """
    out = []
    for i in range(0, max(1, len(endpoints)), MAX_ENDPOINTS_PER_SLICE):
        chunk = endpoints[i : i + MAX_ENDPOINTS_PER_SLICE]
        meta = _meta(
            f"{service_name}-{i // MAX_ENDPOINTS_PER_SLICE}",
            ns,
            run_id,
            "endpointslice",
            **{
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "kpbench.io",
            },
        )
        eps = []
        for ip, node in chunk:
            ep: dict[str, Any] = {
                "addresses": [ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            }
            if node:
                ep["nodeName"] = node
            eps.append(ep)
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": meta,
                "addressType": "IPv4",
                "endpoints": eps,
                "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
            }
        )
    return out


def _host_volumes() -> tuple[list[dict], list[dict]]:
    vols: list[dict] = [
        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
        {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
    ]
    mounts: list[dict] = [
        {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
        {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
    ]
    return vols, mounts


def cleanup_job(
    ns: str,
    run_id: str,
    node: str,
    kube_proxy_image: str,
    kube_proxy_binary: str = "/usr/local/bin/kube-proxy",
) -> dict[str, Any]:
    """`kube-proxy --cleanup` on one node, with the image the DaemonSet runs: removes the iptables,
    IPVS and nftables state of every mode (its IPVS step flushes every virtual server of the node)."""
    vols, mounts = _host_volumes()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(
            job_name("kpbench-cleanup", node), ns, run_id, "cleanup", **{"kpbench.io/node": _lv(node)}
        ),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 300,
            "template": {
                "metadata": {"labels": labels(run_id, "cleanup", **{"kpbench.io/node": _lv(node)})},
                "spec": {
                    **_node_pinned_spec(node),
                    "hostNetwork": True,
                    "restartPolicy": "Never",
                    "priorityClassName": "system-node-critical",
                    "enableServiceLinks": NO_SERVICE_LINKS,
                    "containers": [
                        {
                            "name": "cleanup",
                            "image": kube_proxy_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [kube_proxy_binary, "--cleanup", "--v=2"],
                            "securityContext": {"privileged": True},
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": vols,
                },
            },
        },
    }


def _idle_container(name: str, image: str, module: str, **extra: Any) -> dict[str, Any]:
    """A container that imports `module` (so a pod whose image lacks it fails at its start) and then
    only keeps its pod alive: the harness starts `module` in it through pods/exec. `extra`: the
    container's other fields (env, securityContext, resources...)."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", f"import {module}, time\nwhile True: time.sleep(3600)"],
        **extra,
    }


def probe_pod(ns: str, run_id: str, node: str, image: str) -> dict[str, Any]:
    """The probe on one node: host network and privileged (it reads iptables / nft / ipvsadm state and
    measures from the node's own network stack). The harness's agent is started in it through
    pods/exec (`python -m harness.measure.agent`, JSON lines on stdin/stdout); the container's own
    process keeps the pod alive and checks that the agent module imports."""
    vols, mounts = _host_volumes()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _node_pod_meta("probe", ns, run_id, "probe", node),
        "spec": {
            **_node_pinned_spec(node),
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "enableServiceLinks": NO_SERVICE_LINKS,
            "containers": [
                _idle_container(
                    "probe",
                    image,
                    "harness.measure.agent",
                    env=[
                        {"name": "KPBENCH_AGENT", "value": "python3 -m harness.measure.agent"},
                        _env_field("NODE_NAME", "spec.nodeName"),
                    ],
                    securityContext={"privileged": True},
                    volumeMounts=mounts,
                )
            ],
            "volumes": vols,
        },
    }


def disrupt_client_pod(ns: str, run_id: str, node: str, image: str) -> dict[str, Any]:
    """The disruption phase's client on one node: a pod-network pod (its Service traffic enters the
    node through PREROUTING, as an ordinary client pod's does; not privileged). The prober
    (`python3 -m harness.measure.disrupt_prober`) is started in it through pods/exec."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _node_pod_meta("disrupt", ns, run_id, "disrupt-client", node),
        "spec": {
            **_node_pinned_spec(node),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "enableServiceLinks": NO_SERVICE_LINKS,
            "containers": [
                _idle_container(
                    "client",
                    image,
                    "harness.measure.disrupt_prober",
                    resources={"requests": {"cpu": "10m", "memory": "32Mi"}},
                )
            ],
        },
    }


def node_check_pod(ns: str, run_id: str, node: str, image: str, features: Sequence[str]) -> dict[str, Any]:
    """`python3 -m harness.cluster.nodecheck FEATURE...` on one node (host network and privileged,
    as kube-proxy runs): its answer is the container's termination message."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _node_pod_meta("nodecheck", ns, run_id, "nodecheck", node),
        "spec": {
            **_node_pinned_spec(node),
            "hostNetwork": True,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "enableServiceLinks": NO_SERVICE_LINKS,
            "containers": [
                {
                    "name": "nodecheck",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-m", "harness.cluster.nodecheck", *features],
                    "securityContext": {"privileged": True},
                }
            ],
        },
    }


# python3: the Dockerfile's image and the offline Debian-built one both have it (not always `python`)
AGENT_COMMAND = ["python3", "-u", "-m", "harness.measure.agent"]
LOCUST_COMMAND = ["python3", "-m", "harness.cluster.locust_main"]  # locust -f harness/cluster/locustfile.py


def locust_manifests(
    ns: str,
    run_id: str,
    image: str,
    workers: int,
    *,
    users: int,
    rate: float,
    duration_s: float,
    targets_file: str = "/etc/kpbench/targets.json",
    keepalive: bool = False,
    timeout_s: float = 2.0,
    targets: str = "[]",
    suffix: str = "",
    master_host: str | None = None,
) -> list[dict[str, Any]]:
    """Locust in distributed mode: one master (headless, --expect-workers W) and W workers.

    The targets (JSON [[ClusterIP, port], ...]) are handed over in a ConfigMap mounted at
    `targets_file`; the locustfile is harness/cluster/locustfile.py inside the image. Master and
    workers are Jobs so that they finish with the phase; the master's Service is how workers find
    it: by DNS name, or `master_host` (its ClusterIP, on clusters without cluster DNS). `suffix`
    names one load phase's objects apart from another's.
    """
    if workers < 1:
        raise ValueError("locust distributed mode needs at least one worker")
    name = f"kpbench-locust-master{suffix}"
    cm_name = f"kpbench-locust-targets{suffix}"
    sel_master = labels(
        run_id, "locust-master", **({"kpbench.io/phase": suffix.strip("-")} if suffix else {})
    )
    common_env = [
        {"name": "KPBENCH_TARGETS", "value": targets_file},
        {"name": "KPBENCH_USERS", "value": str(users)},
        {"name": "KPBENCH_KEEPALIVE", "value": "1" if keepalive else "0"},
        {"name": "KPBENCH_RATE", "value": str(rate)},
        {"name": "KPBENCH_TIMEOUT", "value": str(timeout_s)},
    ]
    tvol = [{"name": "targets", "configMap": {"name": cm_name}}]
    tmount = [{"name": "targets", "mountPath": os.path.dirname(targets_file), "readOnly": True}]
    master = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, ns, run_id, "locust-master"),
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": sel_master},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "enableServiceLinks": NO_SERVICE_LINKS,
                    "containers": [
                        {
                            "name": "master",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                *LOCUST_COMMAND,
                                "--master",
                                "--headless",
                                "--expect-workers",
                                str(workers),
                                "--users",
                                str(users),
                                "--spawn-rate",
                                # every user at once: a spawn spread over a second would count
                                # against the achieved rate of a phase a few seconds long
                                str(max(users, 100)),
                                "--run-time",
                                f"{int(duration_s)}s",
                                "--only-summary",
                            ],
                            "ports": [
                                {"containerPort": LOCUST_MASTER_PORT},
                                {"containerPort": LOCUST_MASTER_PORT + 1},
                            ],
                            "env": common_env,
                            "volumeMounts": tmount,
                        }
                    ],
                    "volumes": tvol,
                },
            },
        },
    }
    master_svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns, run_id, "locust-master"),
        "spec": {
            "selector": sel_master,
            "ports": [
                {"name": "comm", "port": LOCUST_MASTER_PORT},
                {"name": "comm-plus-1", "port": LOCUST_MASTER_PORT + 1},
            ],
        },
    }
    worker_labels = labels(run_id, "locust-worker")
    worker = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(f"kpbench-locust-worker{suffix}", ns, run_id, "locust-worker"),
        "spec": {
            "parallelism": workers,
            "completions": workers,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": worker_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {
                                "matchLabels": {
                                    LABEL_RUN: run_label_value(run_id),
                                    LABEL_ROLE: "locust-worker",
                                }
                            },
                        }
                    ],
                    "enableServiceLinks": NO_SERVICE_LINKS,
                    "containers": [
                        {
                            "name": "worker",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                *LOCUST_COMMAND,
                                "--worker",
                                "--master-host",
                                master_host or f"{name}.{ns}.svc",
                                "--master-port",
                                str(LOCUST_MASTER_PORT),
                            ],
                            "env": common_env,
                            "volumeMounts": tmount,
                        }
                    ],
                    "volumes": tvol,
                },
            },
        },
    }
    targets_cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(cm_name, ns, run_id, "locust-targets"),
        "data": {os.path.basename(targets_file): targets},
    }
    return [targets_cm, master_svc, master, worker]


def job_name(prefix: str, node: str) -> str:
    import hashlib

    h = hashlib.sha1(node.encode()).hexdigest()[:6]
    return f"{prefix}-{_dns(node)}"[:55].rstrip("-") + f"-{h}"


def _dns(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-") or "x"


def _lv(s: str) -> str:
    """A label value from a node name (node names can be longer than 63 characters)."""
    return s if len(s) <= 63 else s[:56] + "-" + __import__("hashlib").sha1(s.encode()).hexdigest()[:6]
