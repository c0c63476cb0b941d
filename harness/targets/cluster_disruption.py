"""The cluster target's syncs for the disruption phase (harness.pointloop.disruption): kube-proxy's
DaemonSet pod on the probed node restarted, and Services changed through the API, each sync's start
and end read from that kube-proxy's own metrics (as harness.targets.local_disruption does).

- ``full`` (warm): the kube-proxy pod on the probed node is deleted; its process exits on SIGTERM
  leaving its rules in the kernel, serving, and the DaemonSet's new pod starts with a full sync
  (needFullSync / initialSync) over them. The span is that first full sync's, from the new
  process's metrics; the deletion-to-sync-done time is kept in status["disruption"]["restarts"].
- ``cold`` is not reproduced here (NotImplementedError, the kind skipped with the reason): emptying
  one node's dataplane needs its kube-proxy stopped while ``kube-proxy --cleanup`` runs there, and a
  DaemonSet cannot be stopped on one node without editing its pod template, which rolls every
  node's kube-proxy; and the cleanup cuts every Service of that node's real workload until the
  next first sync. The warm restart is what happens on a cluster (upgrades, evictions, crashes).
- ``add`` / ``update`` / ``delete``: one Service created / its EndpointSlice's endpoints moved / one
  deleted (and put back with the same ClusterIP) through the API, then the kube-proxy syncs that
  carry it on the probed node, until none follows for `SETTLE_S`; the undo the same way, waited
  for, not observed. ``update`` needs a backend pod the Service does not use (with
  cluster.endpoints_via=selector the endpoints follow the pods: skipped).

The prober runs in a pod-network pod on the probed node (harness.cluster.disrupt_probe), in its own
clock; each prober reports its clock against the harness's (offset and round trip) and against its
node's wall clock, so kube-proxy's wall-clock timestamps map into the prober's clock on the node
itself. The clock maps are kept in status["disruption"]["clocks"].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from harness.cluster import ClusterError, kubeproxy_config as kpc, manifests
from harness.cluster.disrupt_probe import ClockMap, ProberStream, RemoteProber
from harness.cluster.probe import scrape_node
from harness.cluster.switch import DS_PATH
from harness.dataplane.base import Change
from harness.model import Endpoint, Model, ModelSpec, Pod, Service, ServicePort, _AddressPermutation
from harness.pointloop.disruption import Span, measure_disruption
from harness.samples import PointContext
from harness.targets.local_disruption import POLL_S, SyncState, note_syncs, settled, sync_state

if TYPE_CHECKING:
    from harness.targets.cluster import _Session

KP_NS = "kube-system"
PROCESS_START = "process_start_time_seconds"
COLD_SKIPPED = (
    "cold is not reproduced on a cluster: emptying one node's dataplane needs its kube-proxy stopped "
    "and `kube-proxy --cleanup` run there; a DaemonSet cannot be stopped on one node without editing "
    "its template (which restarts every node's kube-proxy), and the cleanup cuts the node's real "
    "Service traffic until the next sync"
)


def span_ns(before: SyncState, after: SyncState, not_before_ns: int, clock: ClockMap) -> tuple[int, int]:
    """The syncs finished between two scrapes as one span in the harness's perf_counter_ns: kube-proxy's
    wall-clock end of the last sync, minus their summed duration, mapped through the prober's node
    (wall -> prober monotonic -> harness); never before `not_before_ns` (the call that caused them)."""
    end_wall = int(after.last_ts * 1e9)
    start_wall = int((after.last_ts - (after.seconds - before.seconds)) * 1e9)
    end = clock.to_harness(clock.wall_to_prober(end_wall))
    start = max(clock.to_harness(clock.wall_to_prober(start_wall)), not_before_ns)
    return start, max(start, end)


def cluster_model(svcs: Sequence[Any], backends: Sequence[tuple[str, str | None]], per_service: int, ns: str):
    """The run's Services as harness.model Services (their ClusterIPs as the API gave them; their
    endpoints as harness.cluster.objects assigns them: backend (i + j) mod k), and a Model whose
    pods are the backend pods (for a new Service's endpoints and an update's other ones)."""
    pods = [
        Pod(f"backend{i}", node or "", ip, (manifests.BACKEND_PORT,)) for i, (ip, node) in enumerate(backends)
    ]
    spec = ModelSpec(
        n_services=len(svcs),
        endpoints=per_service,
        port=manifests.SERVICE_PORT,
        target_port=manifests.BACKEND_PORT,
        nodes=("cluster",),
        pods_per_node=max(1, len(pods)),
    )
    model = Model(spec=spec, pods=pods, client_ip="")
    model._ips = _AddressPermutation(spec.service_cidr, spec.seed)  # the identity of an added one only
    port = (ServicePort("http", manifests.SERVICE_PORT, manifests.BACKEND_PORT),)
    out = []
    for k, s in enumerate(svcs):
        i = int(s.name.rsplit("-", 1)[-1]) if s.name.rsplit("-", 1)[-1].isdigit() else k
        eps = tuple(
            Endpoint(pods[(i + j) % len(pods)].ip, manifests.BACKEND_PORT, pods[(i + j) % len(pods)].node)
            for j in range(per_service if pods else 0)
        )
        out.append(Service(i, ns, s.name, s.cluster_ip, port, eps))
    return model, out


class ClusterSyncs:
    """`harness.pointloop.disruption.Syncs` of the cluster target, on the probed node's kube-proxy;
    `start_prober` runs the prober in the disruption client pod on that node.

    `record[kind]`: per observed call, the kube-proxy syncs it spanned and their length."""

    node_ns = ""  # no namespace of ours: cold (its conntrack cleanup) is not reproduced

    def __init__(self, session: _Session, node: str, client_pod: str, mode: str):
        self.s, self.node, self.client_pod = session, node, client_pod
        self.port: int | None = kpc.metrics_port(kpc.with_mode({}, mode, session.opts.sync()))
        try:
            scrape_node(session.rest, node, self.port)
        except Exception:  # noqa: BLE001 - the node proxy cannot reach it: the point's scraper
            self.port = None
        self.selector = session.opts.endpoints_via == "selector"
        self.record: dict[str, list[dict[str, Any]]] = {}
        self.restarts: list[dict[str, Any]] = []
        self.clocks: list[dict[str, Any]] = []
        self.probers: list[RemoteProber] = []
        self.added: dict[str, str] = {}  # model name of an added Service -> its name in the API
        self.saved: dict[tuple[str, str], Any] = {}  # what a change replaced, for its undo
        st = ProberStream(session.conn.api, session.ns, client_pod, "client")
        try:
            self.clock = st.clock()
        finally:
            st.close()
        self.clocks.append({"at": "start", **self.clock.as_dict()})

    # -- the prober ---------------------------------------------------------------------------
    def start_prober(self, ns, targets, *, rate: float, keepalive: int, timeout: float) -> RemoteProber:
        s = self.s
        p = RemoteProber(
            s.conn.api, s.ns, self.client_pod, targets, rate=rate, keepalive=keepalive, timeout=timeout
        )
        self.clock = p.clock
        self.probers.append(p)
        return p

    def clock_record(self) -> list[dict[str, Any]]:
        """The clock maps: the first, then per prober at its start and (`after_*`) once stopped."""
        out = list(self.clocks)
        for p in self.probers:
            c = {"at": "prober", **p.clock.as_dict()}
            if p.clock_after is not None:
                c["after_offset_ns"] = p.clock_after.offset_ns
                c["after_uncertainty_us"] = p.clock_after.as_dict()["uncertainty_us"]
            out.append(c)
        return out

    # -- metrics ------------------------------------------------------------------------------
    def scrape(self) -> dict[str, float]:
        """The probed node's kube-proxy metrics: through the API server's node proxy when that
        reaches it (a refused port then means a kube-proxy between two processes: asked again,
        without the point's fallback, an exec into the probe pod per try, loading the node while
        its sync is timed), else the point's own scraper."""
        if self.port is not None:
            return scrape_node(self.s.rest, self.node, self.port)
        assert self.s.scrape is not None, "program() set the scraper"
        return self.s.scrape()

    def _wait(self, done: Callable[[dict[str, float], SyncState], bool], what: str, timeout_s: float):
        """Poll the probed node's kube-proxy until done(metrics, state); -> both."""
        deadline = time.monotonic() + timeout_s
        err = ""
        while True:
            try:
                m = self.scrape()
            except Exception as e:  # noqa: BLE001 - a kube-proxy between two processes: asked again
                m, err = None, str(e)[:200]
            if m is not None:
                st = sync_state(m)
                if done(m, st):
                    return m, st
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"kube-proxy on {self.node}: {what} not seen after {timeout_s:.0f} s{' (' + err + ')' if err else ''}"
                )
            time.sleep(POLL_S)

    # -- full syncs ---------------------------------------------------------------------------
    def _kube_proxy_pod(self) -> str:
        ds = self.s.rest.get(DS_PATH)
        sel = ",".join(f"{k}={v}" for k, v in ds["spec"]["selector"]["matchLabels"].items())
        pods = self.s.rest.get(
            f"/api/v1/namespaces/{KP_NS}/pods",
            query={"labelSelector": sel, "fieldSelector": f"spec.nodeName={self.node}"},
        )["items"]
        live = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
        if len(live) != 1:
            raise ClusterError(f"kube-proxy on {self.node}: {len(live)} DaemonSet pods, expected one")
        return live[0]

    def warm(self, services: Sequence[Service]) -> Span:
        old = self.scrape().get(PROCESS_START)
        if old is None:
            raise NotImplementedError(
                f"kube-proxy on {self.node} exports no {PROCESS_START}: its restart cannot be told apart"
            )
        pod = self._kube_proxy_pod()
        t = time.perf_counter_ns()
        self.s.rest.delete(f"/api/v1/namespaces/{KP_NS}/pods/{pod}")
        zero = SyncState(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        _m, st = self._wait(
            lambda m, s: m.get(PROCESS_START) not in (None, old) and s.full >= 1 and s.last_ts > 0,
            "a new kube-proxy's first full sync",
            self.s.opts.rollout_timeout_s,
        )
        done = time.perf_counter_ns()
        span = span_ns(zero, st, t, self.clock)
        note_syncs(self.record, "full", zero, st, span)
        self.restarts.append({"pod": pod, "restart_s": round((done - t) / 1e9, 3)})
        return span

    def cold_prepare(self) -> None:
        raise NotImplementedError(COLD_SKIPPED)

    def cold(self, services: Sequence[Service]) -> Span:
        raise NotImplementedError(COLD_SKIPPED)

    # -- one change ---------------------------------------------------------------------------
    def _svc_path(self, name: str = "") -> str:
        return f"/api/v1/namespaces/{self.s.ns}/services" + (f"/{name}" if name else "")

    def _slices_path(self) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.s.ns}/endpointslices"

    def _create(self, name: str, cluster_ip: str | None, eps: Sequence[tuple[str, str | None]]) -> None:
        body = manifests.service(self.s.ns, self.s.state.run_id, name, selector=self.selector)
        if cluster_ip:  # a deleted Service put back: the same address, as the run's lists hold it
            body["spec"]["clusterIP"] = cluster_ip
        deadline = time.monotonic() + 30
        while True:
            try:
                self.s.rest.create(self._svc_path(), body)
                break
            except Exception as e:  # the address of a Service just deleted may not be released yet
                if getattr(e, "status", None) != 422 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if not self.selector:
            for sl in manifests.endpoint_slices(self.s.ns, self.s.state.run_id, name, list(eps)):
                self.s.rest.create(self._slices_path(), sl)

    def _delete(self, name: str) -> None:
        self.s.rest.delete(self._svc_path(name))
        if not self.selector:
            self.s.rest.delete(
                self._slices_path(), query={"labelSelector": f"kubernetes.io/service-name={name}"}
            )

    def _slice_endpoints(self, name: str) -> list[tuple[str, str | None]]:
        items = self.s.rest.get(
            self._slices_path(), query={"labelSelector": f"kubernetes.io/service-name={name}"}
        )["items"]
        return [
            (a, e.get("nodeName")) for sl in items for e in sl.get("endpoints") or [] for a in e["addresses"]
        ]

    def _call(self, change: Change, undo: bool) -> None:
        svc = change.service
        name = self.added.get(svc.name, svc.name)
        if change.kind == "add":
            if undo:  # a deleted one put back as it was
                self._create(name, svc.cluster_ip, self.saved.pop(("delete", name)))
            else:
                name = self.added[svc.name] = f"kpbench-disrupt-{svc.index}"
                self._create(name, None, [(e.ip, e.node or None) for e in svc.endpoints])
        elif change.kind == "delete":
            if undo:
                self.added.pop(svc.name, None)
            else:
                self.saved[("delete", name)] = [] if self.selector else self._slice_endpoints(name)
            self._delete(name)
        elif change.kind == "update":
            if self.selector:
                raise NotImplementedError(
                    "update moves a Service's endpoints: with cluster.endpoints_via=selector they follow the backend pods"
                )
            if undo:
                eps = self.saved.pop(("update", name))
            else:
                eps = [(e.ip, e.node or None) for e in svc.endpoints]
                self.saved[("update", name)] = self._slice_endpoints(name)
                if sorted(ip for ip, _ in self.saved[("update", name)]) == sorted(ip for ip, _ in eps):
                    raise NotImplementedError(f"{name} already has the endpoints an update would move it to")
            body = manifests.endpoint_slices(self.s.ns, self.s.state.run_id, name, eps)[0]
            self.s.rest.merge_patch(f"{self._slices_path()}/{name}-0", {"endpoints": body["endpoints"]})
        else:
            raise ValueError(f"unknown change kind {change.kind!r}")

    def _apply(self, change: Change, kind: str | None) -> tuple[int, int]:
        _m, before = self._wait(lambda m, s: True, "metrics", self.s.sc.measure.sync.timeout_s)
        t0 = time.perf_counter_ns()
        self._call(change, undo=kind is None)

        def consumed(m: dict[str, float], s: SyncState) -> bool:
            return s.consumed_since(before)

        timeout = self.s.sc.measure.sync.timeout_s
        _m, st = self._wait(consumed, f"a sync with the {change.kind}", timeout)
        st = settled(st, lambda: self._wait(consumed, f"the {change.kind} consumed", timeout)[1])
        span = span_ns(before, st, t0, self.clock)
        if kind is not None:
            note_syncs(self.record, kind, before, st, span)
        return span

    def change(self, services: Sequence[Service], change: Change) -> Span:
        return self._apply(change, change.kind)

    def undo(self, services: Sequence[Service], change: Change) -> None:
        self._apply(change, None)


def planned_disruption(spec, probe_nodes: Sequence[str]) -> str:
    """What the disruption phase changes, for the preflight's list."""
    node = probe_nodes[0] if probe_nodes else "the probe node"
    parts = [
        f"per point (measure.disruption): a pod-network client pod on {node} probing {spec.rate:g} new connections/s"
    ]
    if "full" in spec.kinds:
        n = 3 if spec.baseline else 2
        parts.append(
            f"kube-proxy's DaemonSet pod on {node} deleted {n} times (its rules stay and serve; the "
            "DaemonSet's new pod rewrites them)"
        )
    changes = [k for k in ("add", "update", "delete") if k in spec.kinds]
    if changes:
        parts.append(f"one Service {' / '.join(changes)} through the API, each undone")
    return "; ".join(parts)


def ensure_client_pod(session: _Session, node: str) -> str:
    """The disruption client pod on `node` (created once per run), Running -> its name."""
    s = session
    body = manifests.disrupt_client_pod(s.ns, s.state.run_id, node, s.opts.image)
    name = body["metadata"]["name"]
    path = f"/api/v1/namespaces/{s.ns}/pods"
    if s.rest.get_or_none(f"{path}/{name}") is None:
        s.rest.create(path, body)
    deadline = time.monotonic() + s.opts.ready_timeout_s
    while True:
        pod = s.rest.get(f"{path}/{name}")
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            return name
        if phase in ("Failed", "Succeeded") or time.monotonic() > deadline:
            raise ClusterError(
                f"disruption client pod {name} on {node} not running ({phase}) after "
                f"{s.opts.ready_timeout_s:.0f}s: is image {s.opts.image} on the node?"
            )
        time.sleep(1)


def disrupt(session: _Session, p, ctx: PointContext, svcs: Sequence[Any], status: dict) -> list[dict]:
    """The disruption phase on the probed node: rows, and status["disruption"] with the kube-proxy
    syncs, the restarts and the clock maps. kube-proxy's metrics restart with it: the point's
    program_us counts from the end of this phase."""
    s = session
    node = status["probe_node"]
    spec = s.sc.measure.disruption
    per = max(1, s.sc.model.endpoints)
    model, services = cluster_model(svcs, s.endpoints, per, s.ns)
    skipped = {}
    if "update" in spec.kinds and (s.opts.endpoints_via == "selector" or len(s.endpoints) <= per):
        skipped["update"] = {
            "skipped": "update moves a Service's endpoints to backend pods it does not use: "
            f"{len(s.endpoints)} backends for {per} endpoints per Service"
            + (" (endpoints_via=selector)" if s.opts.endpoints_via == "selector" else "")
        }
        spec = spec.model_copy(update={"kinds": [k for k in spec.kinds if k != "update"]})
    syncs = ClusterSyncs(s, node, ensure_client_pod(s, node), p.mode)
    try:
        rows = measure_disruption(syncs, "", services, model, ctx, spec, status)
    finally:
        info = status.setdefault("disruption", {})
        info.setdefault("kinds", {}).update(skipped)
        info["kube_proxy_syncs"] = syncs.record
        info["restarts"] = syncs.restarts
        info["clocks"] = syncs.clock_record()
        info["client"] = "pod network, node " + node
        info["metrics_via"] = "node proxy" if syncs.port is not None else "the point's scraper"
        if syncs.restarts:
            try:
                assert s.scrape is not None, "program() set the scraper"
                s.before = s.scrape()  # the restarted kube-proxy's counters start again
            except Exception:  # noqa: BLE001 - no program_us for this point then, and end_point says why
                s.before = None
    return rows
