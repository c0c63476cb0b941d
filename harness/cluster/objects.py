"""Creating the run's objects at a bounded rate, and deleting them by label.

Services (and, for selector-less Services, their EndpointSlices) are created by a few threads that
share one token bucket (`qps` tokens per second, at most `burst` saved up), like client-go's
rate limiter: the API server sees at most `burst` requests at once and `qps` on average. The
bulk create, its retry policy and its stats are harness.k8s.objects', shared with the local target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.cluster import LABEL_ROLE, LABEL_RUN, manifests, run_label_value
from harness.cluster.kube import Rest, is_status
from harness.k8s.objects import SERVICES, SLICES, CreateStats, bulk_create, post_object
from harness.k8s.ratelimit import TokenBucket
from harness.k8s.rest import request


@dataclass
class CreatedService:
    name: str
    cluster_ip: str
    port: int


def service_name(i: int) -> str:
    return f"kpb-svc-{i:06d}"


class ObjectStore:
    """The run's namespace and what is in it."""

    def __init__(
        self, rest: Rest, namespace: str, run_id: str, *, qps: float = 20, burst: int = 40, workers: int = 8
    ):
        self.rest, self.ns, self.run_id = rest, namespace, run_id
        self.bucket = TokenBucket(qps, burst)
        self.workers = max(1, workers)
        self.services: list[CreatedService] = []
        self.selector = f"{LABEL_RUN}={run_label_value(run_id)}"

    def _post(self, path: str, body: dict) -> tuple[int, bytes]:
        return request(self.rest.api, "POST", path, body, timeout=self.rest.timeout)

    def _create(self, path: str, body: dict) -> dict:
        """Create one object (the shared retry policy); -> the object, as created or as found."""
        outcome, data = post_object(self._post, path, body, limiter=self.bucket)
        if outcome == "existed":  # already there (a retried request that did land): use it
            return self.rest.get(f"{path}/{body['metadata']['name']}")
        return json.loads(data) if data else {}

    def ensure_namespace(self) -> None:
        try:
            self.rest.create("/api/v1/namespaces", manifests.namespace(self.ns, self.run_id))
        except Exception as e:
            if not is_status(e, 409):
                raise

    def create_backend(self, image: str, replicas: int) -> dict:
        return self._create(
            f"/apis/apps/v1/namespaces/{self.ns}/deployments",
            manifests.backend_deployment(self.ns, self.run_id, image, replicas),
        )

    def backend_endpoints(self) -> list[tuple[str, str | None]]:
        sel = ",".join(f"{k}={v}" for k, v in manifests.backend_selector(self.run_id).items())
        pods = self.rest.get(f"/api/v1/namespaces/{self.ns}/pods", query={"labelSelector": sel})["items"]
        out = []
        for p in pods:
            st = p.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
            )
            if ready and st.get("podIP"):
                out.append((st["podIP"], (p.get("spec") or {}).get("nodeName")))
        return sorted(out)

    def create_services(
        self,
        start: int,
        stop: int,
        *,
        selector: bool,
        endpoints: Sequence[tuple[str, str | None]] = (),
        per_service: int = 1,
        on_progress: Callable[[int], None] | None = None,
    ) -> CreateStats:
        """Services start..stop-1 (and their EndpointSlices unless `selector`)."""
        if not selector and endpoints and per_service > len(endpoints):
            raise ValueError(f"{per_service} endpoints per Service but only {len(endpoints)} backend pods")

        def bodies(i: int) -> list[tuple[str, dict]]:
            name = service_name(i)
            out = [
                (
                    SERVICES.format(ns=self.ns),
                    manifests.service(self.ns, self.run_id, name, selector=selector),
                )
            ]
            if not selector and endpoints:
                k = len(endpoints)
                eps = [endpoints[(i + j) % k] for j in range(per_service)]
                out += [
                    (SLICES.format(ns=self.ns), sl)
                    for sl in manifests.endpoint_slices(self.ns, self.run_id, name, eps)
                ]
            return out

        stats, firsts = bulk_create(
            range(start, stop),
            bodies,
            lambda: self._post,
            limiter=self.bucket,
            executor=ThreadPoolExecutor(max_workers=self.workers),
            key=service_name,
            raise_errors=True,
            progress=(lambda st: on_progress(st.objects)) if on_progress else None,
            progress_every=500,
        )
        for i, data in zip(range(start, stop), firsts, strict=True):
            name = service_name(i)
            svc = json.loads(data) if data else self.rest.get(f"{SERVICES.format(ns=self.ns)}/{name}")
            self.services.append(
                CreatedService(name, (svc.get("spec") or {}).get("clusterIP", ""), manifests.SERVICE_PORT)
            )
        return stats

    def delete_services(self, names: Sequence[str]) -> None:
        for name in names:
            self.bucket.acquire()
            self.rest.delete(f"/api/v1/namespaces/{self.ns}/services/{name}")
            self.rest.delete(
                f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices",
                query={"labelSelector": f"kubernetes.io/service-name={name}"},
            )
        gone = set(names)
        self.services = [s for s in self.services if s.name not in gone]

    # -- deletion by label ---------------------------------------------------------------------
    COLLECTIONS = (
        "/api/v1/namespaces/{ns}/services",
        "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        "/apis/apps/v1/namespaces/{ns}/deployments",
        "/apis/batch/v1/namespaces/{ns}/jobs",
        "/api/v1/namespaces/{ns}/pods",
        "/api/v1/namespaces/{ns}/configmaps",
    )

    def _labelled(self) -> list[tuple[str, str, list[dict]]]:
        """(path, kind, items labelled with the run) per collection the API serves."""
        out = []
        for tmpl in self.COLLECTIONS:
            path = tmpl.format(ns=self.ns)
            try:
                items = self.rest.get(path, query={"labelSelector": self.selector})["items"]
            except Exception as e:
                if is_status(e, 404):
                    continue
                raise
            out.append((path, path.rsplit("/", 1)[1], items))
        return out

    def delete_by_label(self) -> dict[str, int]:
        """Delete every object labelled with the run in its namespace, kind by kind; -> counts."""
        counts: dict[str, int] = {}
        for path, kind, items in self._labelled():
            counts[kind] = len(items)
            if not items:
                continue
            try:
                self.rest.delete(path, query={"labelSelector": self.selector})
            except Exception as e:
                if not is_status(e, 405):  # no deletecollection for this kind: one by one
                    raise
                for it in items:
                    self.rest.delete(f"{path}/{it['metadata']['name']}")
        return counts

    def remaining(self) -> dict[str, int]:
        out = {}
        for _path, kind, items in self._labelled():
            # pods/jobs being deleted still list until their finalizers run
            live = [i for i in items if not (i.get("metadata") or {}).get("deletionTimestamp")]
            if live:
                out[kind] = len(live)
        return out


def role_selector(run_id: str, role: str) -> str:
    return f"{LABEL_RUN}={run_label_value(run_id)},{LABEL_ROLE}={role}"


__all__ = ["TokenBucket", "ObjectStore", "CreateStats", "CreatedService", "service_name", "role_selector"]
