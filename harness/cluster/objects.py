"""Creating the run's objects at a bounded rate, and deleting them by label.

Services (and, for selector-less Services, their EndpointSlices) are created by a few threads that
share one token bucket (`qps` tokens per second, at most `burst` saved up), like client-go's
rate limiter: the API server sees at most `burst` requests at once and `qps` on average. The
bulk create, its retry policy and its stats are harness.k8s.objects', shared with the local target.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness.cluster import LABEL_ROLE, LABEL_RUN, manifests, run_label_value
from harness.cluster.kube import Rest, is_status
from harness.k8s.objects import SERVICES, SLICES, CreateStats, bulk_create, post_object
from harness.k8s.ratelimit import TokenBucket
from harness.k8s.rest import request, send


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
        "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        "/api/v1/namespaces/{ns}/services",
        "/apis/apps/v1/namespaces/{ns}/deployments",
        "/apis/batch/v1/namespaces/{ns}/jobs",
        "/api/v1/namespaces/{ns}/pods",
        "/api/v1/namespaces/{ns}/configmaps",
    )

    def _paths(self) -> list[str]:
        return [tmpl.format(ns=self.ns) for tmpl in self.COLLECTIONS]

    def delete_by_label(self) -> dict[str, str]:
        """One deletecollection per kind for everything labelled with the run (no list first: at
        10,000 Services the list alone outlasted the read timeout); -> kind: outcome ("deleted",
        "pending" when the call ran out of time and the API server is still deleting, "one by one"
        where the API serves no deletecollection, "not served")."""
        return {path.rsplit("/", 1)[1]: self._delete_collection(path) for path in self._paths()}

    def _delete_collection(self, path: str) -> str:
        from urllib3.exceptions import HTTPError

        try:
            self.rest.delete(path, query={"labelSelector": self.selector}, timeout=DELETE_TIMEOUT)
        except Exception as e:
            if is_status(e, 404):
                return "not served"
            if is_status(e, 405):  # no deletecollection for this kind: one by one
                for name in self._names(path):
                    self.rest.delete(f"{path}/{name}")
                return "one by one"
            if is_status(e, 429, 500, 503, 504) or isinstance(e, HTTPError | OSError):
                # the API server's request timeout (60 s by default) cut a long deletecollection:
                # what it deleted stays deleted; wait_deleted asks again for the rest
                return "pending"
            raise
        return "deleted"

    def _list_meta(self, path: str) -> list[dict] | None:
        """Every labelled object's metadata at `path`, in pages (PartialObjectMetadata: names,
        labels, deletionTimestamp, not the 10,000 bodies); None: the API does not serve it."""
        out: list[dict] = []
        cont = None
        while True:
            r = send(
                self.rest.api,
                "GET",
                path,
                query={"labelSelector": self.selector, "limit": LIST_PAGE, "continue": cont},
                accept=META_LIST,
                timeout=self.rest.timeout,
            )
            if r.status == 404:
                return None
            if not 200 <= r.status <= 299:
                from kubernetes.client.rest import ApiException

                raise ApiException(status=r.status, reason=r.reason, body=r.data.decode("utf-8", "replace"))
            page = json.loads(r.data) if r.data else {}
            out += [i.get("metadata") or {} for i in page.get("items") or []]
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return out

    def _names(self, path: str) -> list[str]:
        return [m["name"] for m in self._list_meta(path) or []]

    def remaining(self) -> dict[str, int]:
        """kind: how many labelled objects are left that are not already being deleted."""
        out = {}
        for path in self._paths():
            # pods/jobs being deleted still list until their finalizers run
            live = [m for m in self._list_meta(path) or [] if not m.get("deletionTimestamp")]
            if live:
                out[path.rsplit("/", 1)[1]] = len(live)
        return out

    def wait_deleted(
        self,
        log: Callable[[str], None],
        *,
        stall_s: float = 120,
        cap_s: float = 1800,
        every_s: float = 10,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, int]:
        """Wait until no labelled object is left, asking again (deletecollection) while some are;
        a progress line at most every `every_s` (between the calls: one runs up to the API
        server's request timeout). Bounded: gives up after `stall_s` without one object going, or
        `cap_s` in all; -> what is left ({} when all went)."""
        t0 = clock()
        left = self.remaining()
        best, best_t, said = _total(left), t0, t0
        start_total = best
        while left:
            now = clock()
            if now - best_t >= stall_s or now - t0 >= cap_s:
                log(
                    f"deleting the run's objects in {self.ns}: {_describe(left)} still there after "
                    f"{now - t0:.0f}s ({'no progress for ' + format(now - best_t, '.0f') + 's' if now - best_t >= stall_s else 'time cap'})"
                )
                return left
            if now - said >= every_s:
                log(
                    f"deleting the run's objects in {self.ns}: {_describe(left)} left "
                    f"({start_total - _total(left)} gone in {now - t0:.0f}s)"
                )
                said = now
            for path in self._paths():
                if path.rsplit("/", 1)[1] in left:
                    self._delete_collection(path)
            sleep(1)
            left = self.remaining()
            if _total(left) < best:
                best, best_t = _total(left), clock()
        return {}


# (connect, read) seconds: a deletecollection runs up to the API server's request timeout (60 s)
DELETE_TIMEOUT = (5, 90)
LIST_PAGE = 1000
META_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"


def _total(left: dict[str, int]) -> int:
    return sum(left.values())


def _describe(left: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(left.items()))


def role_selector(run_id: str, role: str) -> str:
    return f"{LABEL_RUN}={run_label_value(run_id)},{LABEL_ROLE}={role}"


__all__ = ["TokenBucket", "ObjectStore", "CreateStats", "CreatedService", "service_name", "role_selector"]
