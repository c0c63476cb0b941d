"""A small in-memory stand-in for a kubeadm cluster's API server, on a loopback port (tests only).

Plain HTTP on 127.0.0.1, generic REST over paths (create/get/list with labelSelector/put/merge
patch/delete/deletecollection), plus just enough of the controllers for the cluster target's
procedures: SelfSubjectAccessReview (allowed unless listed in `deny`), ClusterIP allocation,
Jobs that succeed at once (and record the node they ran on), the kube-proxy DaemonSet rolling out
at once, its pods disappearing while paused, each node's /proxyMode (through the node-proxy
path) answering the mode of the config.conf the DaemonSet last rolled out, and node kernel check
pods (harness.cluster.nodecheck) answering at once with the check run on this machine's kernel.

Not a Kubernetes API server: no validation, no watch, no admission. It lets unit tests drive the
real client code (kubeconfig loading, urllib3, the harness's REST layer) end to end.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

from harness.cluster import KP_KEY, PAUSE_KEY

CM = "/api/v1/namespaces/kube-system/configmaps/kube-proxy"
DS = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"

KUBEADM_CONFIG = """apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
iptables:
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  scheduler: ""
metricsBindAddress: ""
mode: ""
"""


def kubeadm_configmap(config: str = KUBEADM_CONFIG) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "kube-proxy",
            "namespace": "kube-system",
            "labels": {"app": "kube-proxy"},
            "annotations": {"kubeadm.kubernetes.io/component-config.hash": "sha256:abc"},
        },
        "data": {KP_KEY: config, "kubeconfig.conf": "apiVersion: v1\nkind: Config\n"},
    }


def kubeadm_daemonset(image: str = "registry.k8s.io/kube-proxy:v1.34.2") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-proxy"}},
                "spec": {
                    "hostNetwork": True,
                    "priorityClassName": "system-node-critical",
                    "serviceAccountName": "kube-proxy",
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [
                        {
                            "name": "kube-proxy",
                            "image": image,
                            "command": [
                                "/usr/local/bin/kube-proxy",
                                "--config=/var/lib/kube-proxy/config.conf",
                                "--hostname-override=$(NODE_NAME)",
                            ],
                            "securityContext": {"privileged": True},
                            "volumeMounts": [
                                {"name": "kube-proxy", "mountPath": "/var/lib/kube-proxy"},
                                {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "kube-proxy", "configMap": {"name": "kube-proxy"}},
                        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
                    ],
                    "tolerations": [{"operator": "Exists"}],
                },
            },
        },
    }


def node(
    name: str,
    kernel: str = "6.8.0-45-generic",
    ip: str = "192.0.2.10",
    control_plane: bool = False,
    ready: bool = True,
) -> dict:
    labels = {"kubernetes.io/hostname": name}
    if control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "nodeInfo": {"kernelVersion": kernel, "kubeletVersion": "v1.34.2", "osImage": "Ubuntu 24.04 LTS"},
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}],
        },
    }


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _match(labels: dict, selector: str) -> bool:
    for term in filter(None, (selector or "").split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class FakeCluster:
    def __init__(
        self,
        *,
        nodes=None,
        with_configmap: bool = True,
        with_daemonset: bool = True,
        config: str = KUBEADM_CONFIG,
        deny: tuple = (),
        node_proxy: bool = True,
    ):
        self.objects: dict[str, dict] = {}
        self.deny = set(deny)  # {(verb, resource, subresource)}
        self.node_proxy = node_proxy
        self.calls: list[tuple[str, str]] = []
        self.jobs_ran: list[tuple[str, list]] = []  # (node, command)
        self.fail_on: dict[tuple[str, str], int] = {}  # (method, path prefix) -> HTTP status to answer
        self.lock = threading.RLock()
        self._rv = itertools.count(1)
        self._ip = itertools.count(10)
        for n in nodes if nodes is not None else [node("node-a"), node("node-b", ip="192.0.2.11")]:
            self._put(f"/api/v1/nodes/{n['metadata']['name']}", n)
        if with_configmap:
            self._put(CM, kubeadm_configmap(config))
        if with_daemonset:
            self._put(DS, kubeadm_daemonset())
            self.running_config = config  # what "kube-proxy" on the nodes runs
            self._rollout()
        else:
            self.running_config = None
        self.server = None

    # -- state helpers
    def _put(self, path, obj):
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        md["resourceVersion"] = str(next(self._rv))
        self.objects[path] = obj
        return obj

    def _rollout(self):
        ds = self.objects.get(DS)
        if not ds:
            return
        n = len(self.list("/api/v1/nodes"))
        down = len(self.not_ready())  # their old pods stay Terminating: no updated pod there, none available
        paused = PAUSE_KEY in (ds["spec"]["template"]["spec"].get("nodeSelector") or {})
        want = 0 if paused else n
        gen = ds["metadata"].get("generation", 1)
        ds["metadata"]["generation"] = gen
        ds["status"] = {
            "desiredNumberScheduled": want,
            "updatedNumberScheduled": max(0, want - down),
            "numberAvailable": max(0, want - down),
            "observedGeneration": gen,
            **({"numberUnavailable": down} if want and down else {}),
        }
        cm = self.objects.get(CM)
        self.running_config = None if paused else (cm["data"].get(KP_KEY) if cm else None)

    def list(self, coll: str, selector: str = "") -> list[dict]:
        depth = coll.count("/") + 1
        return [
            o
            for p, o in sorted(self.objects.items())
            if p.startswith(coll + "/")
            and p.count("/") == depth
            and _match((o.get("metadata") or {}).get("labels") or {}, selector)
        ]

    def not_ready(self) -> list[str]:
        return [
            o["metadata"]["name"]
            for o in self.list("/api/v1/nodes")
            if not any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (o.get("status") or {}).get("conditions") or []
            )
        ]

    def node_mode(self, name: str) -> str | None:
        if self.running_config is None or name in self.not_ready():
            return None
        doc = yaml.safe_load(self.running_config) or {}
        return doc.get("mode") or "iptables"

    def cm_config(self) -> str:
        return self.objects[CM]["data"][KP_KEY]

    # -- HTTP
    def handle(self, method: str, url: str, body: bytes) -> tuple[int, object]:
        u = urlparse(url)
        path, q = u.path.rstrip("/"), {k: v[0] for k, v in parse_qs(u.query).items()}
        with self.lock:
            self.calls.append((method, path))
            for (m, prefix), code in self.fail_on.items():
                if m == method and path.startswith(prefix):
                    return code, {"kind": "Status", "message": "injected failure", "code": code}
            data = json.loads(body) if body else None
            if path == "/version":
                return 200, {"gitVersion": "v1.34.2", "platform": "linux/amd64", "major": "1", "minor": "34"}
            if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
                ra = data["spec"]["resourceAttributes"]
                allowed = (ra["verb"], ra["resource"], ra.get("subresource", "")) not in self.deny
                return 201, {**data, "status": {"allowed": allowed}}
            if "/proxy/" in path and path.startswith("/api/v1/nodes/"):
                name = path.split("/")[4].split(":")[0]
                mode = self.node_mode(name)
                if not self.node_proxy or mode is None:
                    return 503, {
                        "kind": "Status",
                        "message": "error trying to reach service: dial tcp: connection refused",
                    }
                if path.endswith("/proxyMode"):
                    return 200, mode
                return (
                    200,
                    "kubeproxy_sync_proxy_rules_duration_seconds_sum 1.5\nkubeproxy_sync_proxy_rules_duration_seconds_count 3\n",
                )
            if method == "GET":
                if path in self.objects:
                    return 200, self.objects[path]
                if path == "/api/v1/namespaces/kube-system/pods":
                    ds = self.objects.get(DS)
                    paused = ds and PAUSE_KEY in (ds["spec"]["template"]["spec"].get("nodeSelector") or {})
                    items = (
                        []
                        if (not ds or paused)
                        else [
                            {"metadata": {"name": f"kube-proxy-{i}", "labels": {"k8s-app": "kube-proxy"}}}
                            for i in range(len(self.list("/api/v1/nodes")))
                        ]
                    )
                    return 200, {"kind": "PodList", "items": items}
                if self._is_collection(path):
                    return 200, {"kind": "List", "items": self.list(path, q.get("labelSelector", ""))}
                return 404, {
                    "kind": "Status",
                    "reason": "NotFound",
                    "message": f"{path} not found",
                    "code": 404,
                }
            if method == "POST":
                name = data["metadata"]["name"]
                p = f"{path}/{name}"
                if p in self.objects:
                    return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
                if path.endswith("/services"):
                    data.setdefault("spec", {})["clusterIP"] = (
                        f"10.96.{next(self._ip) // 250}.{next(self._ip) % 250 + 1}"
                    )
                if path.endswith("/jobs"):
                    spec = data["spec"]["template"]["spec"]
                    self.jobs_ran.append((spec.get("nodeName"), spec["containers"][0]["command"]))
                    data["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
                if path.endswith("/namespaces"):
                    data["status"] = {"phase": "Active"}
                if path.endswith("/pods"):
                    self._nodecheck(data)
                return 201, self._put(p, data)
            if method in ("PUT", "PATCH"):
                if path not in self.objects:
                    return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
                new = data if method == "PUT" else merge_patch(self.objects[path], data)
                if path == DS:
                    old_spec = self.objects[path].get("spec")
                    gen = self.objects[path]["metadata"].get("generation", 1)
                    new.setdefault("metadata", {})["generation"] = gen + (new.get("spec") != old_spec)
                obj = self._put(path, new)
                if path == DS:
                    self._rollout()
                return 200, obj
            if method == "DELETE":
                if path in self.objects:
                    obj = self.objects.pop(path)
                    return 200, obj
                if self._is_collection(path):
                    for o in self.list(path, q.get("labelSelector", "")):
                        self.objects.pop(f"{path}/{o['metadata']['name']}", None)
                    return 200, {"kind": "Status", "status": "Success"}
                return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
        return 405, {"kind": "Status", "code": 405}

    @staticmethod
    def _nodecheck(pod: dict) -> bool:
        """A node kernel check pod (harness.cluster.nodecheck) "runs" at once: the check itself runs
        here, on this machine's kernel, and its answer becomes the terminated container's message."""
        c = pod["spec"]["containers"][0]
        cmd = c.get("command") or []
        if cmd[:3] != ["python3", "-m", "harness.cluster.nodecheck"]:
            return False
        from harness.cluster.nodecheck import check

        msg = json.dumps(check(cmd[3:]))
        pod["status"] = {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": c["name"],
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": msg}},
                }
            ],
        }
        return True

    @staticmethod
    def _is_collection(path: str) -> bool:
        parts = path.strip("/").split("/")
        # /api/v1/<res> | /api/v1/namespaces/<ns>/<res> | /apis/<g>/<v>/... same shapes
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        return len(rest) == 1 or (len(rest) == 3 and rest[0] == "namespaces")

    # -- server
    def start(self) -> FakeCluster:
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                code, obj = fake.handle(self.command, self.path, body)
                out = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(obj, str) else "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _do

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def kubeconfig(self, path, context: str = "fake") -> str:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": "test-token"}}],
        }
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        return str(path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
