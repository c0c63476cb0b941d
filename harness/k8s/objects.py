"""Services + EndpointSlices for model Services, created in bulk at a bounded rate.

One retry policy (`post_object`), one token bucket per bulk create, one `CreateStats`: used by
the local target (`create_services`, from harness.model Services) and by the cluster target
(harness.cluster.objects.ObjectStore, from its own manifests).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.k8s import KubeError
from harness.k8s.endpoint import ApiEndpoint
from harness.k8s.ratelimit import TokenBucket
from harness.k8s.rest import request

MANAGED_BY = "kpbench"
SERVICES = "/api/v1/namespaces/{ns}/services"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def service_body(svc, labels: dict | None = None) -> dict:
    """A v1 Service for a model.Service: selector-less, ClusterIP fixed by the model."""
    ports = []
    for p in svc.ports:
        d = {"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol.upper()}
        if p.node_port is not None:
            d["nodePort"] = p.node_port
        ports.append(d)
    spec: dict[str, Any] = {
        "type": "NodePort" if any(p.node_port is not None for p in svc.ports) else "ClusterIP",
        "clusterIP": svc.cluster_ip,
        "clusterIPs": [svc.cluster_ip],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": ports,
    }
    if svc.affinity_timeout:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, **(labels or {})},
        },
        "spec": spec,
    }


def endpoint_slice_bodies(svc, node_names: dict[str, str] | None = None) -> list[dict]:
    """discovery.k8s.io/v1 EndpointSlices for a model.Service.

    A slice carries one port list for all its endpoints, so endpoints are grouped by their base
    port (usually a single slice). `node_names` maps model node names ("a") to Node objects.
    """

    def one(k: int, endpoints: list[dict], ports: list[dict]) -> dict:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{svc.name}-{k}",
                "namespace": svc.namespace,
                "labels": {
                    "kubernetes.io/service-name": svc.name,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }

    groups: dict[int, list] = {}
    for e in svc.endpoints:
        groups.setdefault(e.port, []).append(e)
    base_target = svc.ports[0].target_port
    slices = []
    for k, (base, eps) in enumerate(sorted(groups.items())):
        endpoints = []
        for e in eps:
            d: dict[str, Any] = {
                "addresses": [e.ip],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            }
            if node_names and e.node in node_names:
                d["nodeName"] = node_names[e.node]
            endpoints.append(d)
        slices.append(
            one(
                k,
                endpoints,
                [
                    {
                        "name": p.name,
                        "port": base + (p.target_port - base_target),
                        "protocol": p.protocol.upper(),
                    }
                    for p in svc.ports
                ],
            )
        )
    if not slices:  # no endpoints: an empty slice still tells kube-proxy "none" (REJECT rules)
        slices.append(
            one(
                0,
                [],
                [{"name": p.name, "port": p.target_port, "protocol": p.protocol.upper()} for p in svc.ports],
            )
        )
    return slices


@dataclass
class CreateStats:
    services: int = 0
    slices: int = 0
    existed: int = 0
    retries: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    created_at: dict[str, int] = field(
        default_factory=dict
    )  # "ns/name" -> monotonic_ns after its last object

    @property
    def objects(self) -> int:
        return self.services + self.slices

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.seconds if self.seconds > 0 else 0.0

    rate = objects_per_s

    def as_dict(self) -> dict:
        return {
            "services": self.services,
            "slices": self.slices,
            "objects": self.objects,
            "existed": self.existed,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "objects_per_s": round(self.objects_per_s, 1),
            "errors": self.errors[:20],
            "n_errors": len(self.errors),
        }


Post = Callable[[str, dict], "tuple[int, bytes | str | None]"]


def post_object(
    post: Post,
    path: str,
    body: dict,
    *,
    limiter: TokenBucket,
    max_retries: int = 5,
    is_ours: Callable[[dict], bool] | None = None,
    on_retry: Callable[[], None] | None = None,
) -> tuple[str, bytes]:
    """POST `body` with the one retry policy; -> ("created" | "existed", response body).

    A token from `limiter` per attempt. 409 is "existed" (a sweep grows idempotently). A Service
    whose ClusterIP is "already allocated" (422: the allocator answers before the name check) is
    "existed" when `is_ours(body)` says the Service there has that IP. 429, 5xx and connection
    errors are retried with backoff (0.05 s doubling to 2 s, `on_retry()` each time); anything
    else, or the last retry, raises KubeError.
    """
    delay = 0.05
    status: int | None
    for attempt in range(max_retries + 1):
        limiter.acquire()
        try:
            status, data = post(path, body)
        except Exception as e:  # noqa: BLE001 - ApiException (non-2xx), urllib3 errors: retried or raised below
            status = getattr(e, "status", None)
            data = getattr(e, "body", None) or str(e)
        if isinstance(data, str):
            data = data.encode()
        data = data or b""
        if status in (200, 201, 202):
            return "created", data
        if status == 409:
            return "existed", data
        if status == 422 and body.get("kind") == "Service" and b"already allocated" in data:
            if is_ours is not None and is_ours(body):
                return "existed", data
        retryable = status is None or status == 0 or status == 429 or (status and status >= 500)
        if not retryable or attempt == max_retries:
            msg = data.decode(errors="replace")
            raise KubeError(f"POST {path} {body['metadata']['name']}: HTTP {status}: {msg[:300]}")
        if on_retry:
            on_retry()
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def bulk_create(
    units: Sequence,
    bodies: Callable[[Any], list[tuple[str, dict]]],
    post: Callable[[], Post],
    *,
    executor,
    limiter: TokenBucket | None = None,
    qps: float | None = None,
    max_retries: int = 5,
    is_ours: Callable[[dict], bool] | None = None,
    key: Callable[[Any], str] = lambda u: str(u),
    raise_errors: bool = False,
    progress: Callable[[CreateStats], None] | None = None,
    progress_every: int = 1000,
) -> tuple[CreateStats, list]:
    """Create every unit's objects (`bodies(unit)` -> [(path, body)], the Service first) from the
    threads of `executor`, through one token bucket (`limiter`, else one of `qps` per second).

    `post()` gives the calling thread's poster (path, body) -> (status, data). Returns the stats
    and, per unit, the response body of its first object (the created Service; b"" if it
    existed). `raise_errors`: the first failure propagates; else it is recorded in stats.errors.
    """
    stats = CreateStats()
    limiter = limiter or TokenBucket(qps)
    lock = threading.Lock()

    def retried() -> None:
        with lock:
            stats.retries += 1

    def one(unit) -> bytes | None:
        try:
            first = None
            n_sl = n_ex = 0
            for k, (path, body) in enumerate(bodies(unit)):
                outcome, data = post_object(
                    post(),
                    path,
                    body,
                    limiter=limiter,
                    max_retries=max_retries,
                    is_ours=is_ours,
                    on_retry=retried,
                )
                n_ex += int(outcome == "existed")
                if k == 0:
                    first = data if outcome == "created" else b""
                else:
                    n_sl += 1
            t = time.monotonic_ns()
            with lock:
                stats.services += 1
                stats.slices += n_sl
                stats.existed += n_ex
                stats.created_at[key(unit)] = t
                if progress and stats.services % progress_every == 0:
                    progress(stats)
            return first
        except Exception as e:
            if raise_errors:
                raise
            with lock:
                stats.errors.append(f"{key(unit)}: {e}")
            return None

    t0 = time.perf_counter()
    with executor as ex:
        firsts = list(ex.map(one, units))
    stats.seconds = time.perf_counter() - t0
    return stats, firsts


def post_typed(client, path: str, body: dict, timeout: float = 60) -> tuple[int, bytes]:
    """POST through the typed methods (CoreV1Api / DiscoveryV1Api with model objects)."""
    from kubernetes import client as k
    from kubernetes.client.rest import ApiException

    ns = body["metadata"]["namespace"]
    try:
        if body["kind"] == "Service":
            svc = k.V1Service.from_dict(body)
            assert svc is not None  # from_dict returns None only for a None dict
            k.CoreV1Api(client).create_namespaced_service(ns, svc, _request_timeout=timeout)
        else:
            eps = k.V1EndpointSlice.from_dict(body)
            assert eps is not None  # from_dict returns None only for a None dict
            k.DiscoveryV1Api(client).create_namespaced_endpoint_slice(ns, eps, _request_timeout=timeout)
    except ApiException as e:
        return e.status, (e.body or "").encode() if isinstance(e.body, str) else (e.body or b"")
    return 201, b""


def service_has_ip(client, body: dict) -> bool:
    """True when the Service named in `body` exists with `body`'s ClusterIP."""
    md = body["metadata"]
    status, data = request(
        client, "GET", f"/api/v1/namespaces/{md['namespace']}/services/{md['name']}", timeout=30
    )
    if status != 200:
        return False
    return json.loads(data).get("spec", {}).get("clusterIP") == body["spec"]["clusterIP"]


def ensure_namespaces(api: ApiEndpoint, names: Iterable[str]) -> None:
    """Create the namespaces that do not exist yet."""
    wanted = sorted(set(names))

    def run(client):
        for n in wanted:
            status, data = request(
                client,
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}},
            )
            if status not in (200, 201, 202, 409):
                raise KubeError(f"creating namespace {n}: HTTP {status}: {data[:300]!r}")

    api.call(run)


def create_services(
    api: ApiEndpoint,
    model_services: Sequence,
    qps: float | None = None,
    concurrency: int = 8,
    *,
    node_names: dict[str, str] | None = None,
    create_namespaces: bool = True,
    max_retries: int = 5,
    strict: bool = True,
    typed: bool = False,
    progress=None,
) -> CreateStats:
    """Create one Service (ClusterIP from the model) plus its selector-less EndpointSlice(s) per
    model Service through the official kubernetes client, `concurrency` threads each with its
    own ApiClient, at most `qps` objects per second in total (None: as fast as it goes).

    Objects that already exist (409) count as `existed`, so growing a sweep is idempotent.
    429/5xx and connection errors are retried with backoff. `strict`: raise KubeError
    at the end if anything failed. `created_at` gives, per Service, the monotonic_ns right after
    its last object was created (the start of network-programming latency).
    `typed`: go through CoreV1Api/DiscoveryV1Api model objects instead of raw JSON bodies.
    """
    api = getattr(api, "api", api)  # a LocalCluster: its endpoint
    if create_namespaces:
        ensure_namespaces(api, (s.namespace for s in model_services))
    lock = threading.Lock()
    local = threading.local()
    clients: list = []

    def client():
        c = getattr(local, "client", None)
        if c is None:  # one ApiClient (and so one connection pool) per worker thread
            c = local.client = api.client()
            with lock:
                clients.append(c)
        return c

    def post() -> Post:
        c = client()
        if typed:
            return lambda path, body: post_typed(c, path, body)
        return lambda path, body: request(c, "POST", path, body)

    def bodies(svc) -> list[tuple[str, dict]]:
        ns = svc.namespace
        return [(SERVICES.format(ns=ns), service_body(svc))] + [
            (SLICES.format(ns=ns), sl) for sl in endpoint_slice_bodies(svc, node_names)
        ]

    try:
        stats, _ = bulk_create(
            model_services,
            bodies,
            post,
            qps=qps,
            executor=api.executor(max(1, concurrency)),
            max_retries=max_retries,
            is_ours=lambda b: service_has_ip(client(), b),
            key=lambda s: f"{s.namespace}/{s.name}",
            progress=progress,
        )
    finally:
        for c in clients:
            c.close()  # ApiClient.close does not raise
    if strict and stats.errors:
        raise KubeError(
            f"{len(stats.errors)} of {len(model_services)} Services failed; first: {stats.errors[0]}"
        )
    return stats


def create_node(api: ApiEndpoint, name: str, internal_ip: str, pod_cidr: str | None = None) -> None:
    """A Node object for a lab node (status addresses set on create, as the kubelet does)."""
    api = getattr(api, "api", api)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ]
        },
    }
    status, data = api.call(request, "POST", "/api/v1/nodes", body)
    if status not in (200, 201, 202, 409):
        raise KubeError(f"creating Node {name}: HTTP {status}: {data[:500]!r}")


def list_names(api: ApiEndpoint, namespace: str, kind: str = "services") -> list[str]:
    """Names of Services or EndpointSlices in `namespace` (paged list through the typed client)."""
    api = getattr(api, "api", api)

    def run(client):
        from kubernetes import client as k

        names: list[str] = []
        token = None
        r: Any  # V1ServiceList or V1EndpointSliceList; the API server fills every item's name
        while True:
            if kind == "services":
                r = k.CoreV1Api(client).list_namespaced_service(namespace, limit=5000, _continue=token)
            else:
                r = k.DiscoveryV1Api(client).list_namespaced_endpoint_slice(
                    namespace, limit=5000, _continue=token
                )
            names += [i.metadata.name for i in r.items]
            token = r.metadata._continue
            if not token:
                return names

    return api.call(run)
