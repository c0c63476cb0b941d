"""The local target's worker: the lab's measurements against real kube-proxy and a real apiserver.

    python -m harness.targets.local_worker JOB.json

On the host kernel it starts etcd + kube-apiserver in namespace `kpb-<tag>-api`
(harness.targets.localcluster); in a UML guest (job key `local_cluster`: IPVS, which the host
lacks) the host runs them and the worker reaches them over the guest's TAP link
(localcluster.GuestCluster). Either way it builds the usual two-node lab (harness.lab.topology,
nginx backends, the client pod and its probe agent) with the tag of the job, attaches both node
namespaces to the API bridge and creates a Node object per lab node. Then, per point (counts
ascending, as the runner plans them):

* kube-proxy is stopped on both nodes and `kube-proxy --cleanup` run in each node namespace (it
  removes iptables, ipvs and nftables state; required between iptables and ipvs, and it makes the
  timed start begin from an empty kernel, like the lab's full sync);
* the API is brought to exactly the point's N Services: only the missing Services + EndpointSlices
  are created (rows api_create_rps, api_create_s), changes left by the previous point's sync_one
  are undone, nothing is deleted and recreated;
* sync_full_s: kube-proxy (mode of the point, KubeProxyConfiguration rendered by the harness) is
  started on both nodes; the row is the time from its start until node a's kernel holds every
  Service IP (KUBE-SERVICES rules, the nftables service-ips / no-endpoint-services maps, or the
  KUBE-CLUSTER-IP ipset) AND a connect to the last Service succeeds;
* fidelity: what kube-proxy installed (the lab dataplane's own counts() read from node a) against
  what the lab dataplane of the same release installs for the same Services (plus
  default/kubernetes) in a scratch namespace `kpb-<tag>-fid`, and for iptables and nftables the
  two listings rule by rule (harness.targets.fidelity); point status `fidelity` and
  `fidelity_differences`;
* connect and load exactly as the lab (harness.measure);
* sync_one_s / sync_apply_s through harness.measure.sync.measure_sync_one with a Dataplane whose
  apply() is API calls (ApiDataplane); `program_us` = API call return -> served, in microseconds;
* kube-proxy's own metrics from node a's /metrics (rows kp_*).

A kube-proxy that exits marks the point failed with its log tail and is restarted for the next
point. The worker's scenario `validate` runs the lab's validation matrix against real kube-proxy.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from harness.dataplane import make_dataplane
from harness.k8s.rest import request as _request
from harness.lab import netns
from harness.lab.netns import LabError
from harness.model import Endpoint, Service, ServicePort
from harness.modes import MODES, mode as mode_spec
from harness.pointloop.lab import LabPoints
from harness.pointloop.loop import JobPoint, failed_status
from harness.pointloop.worker import Job, emit, main as worker_main
from harness.samples import PointContext, SampleWriter
from harness.targets import fidelity as fidelity_diff, localcluster as lc
from harness.targets.local_dataplane import ApiDataplane
from harness.targets.local_kubeproxy import metric_rows

if TYPE_CHECKING:
    pass

TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
POLL_S = 0.02


class KubeProxyCrashed(LabError):
    """kube-proxy exited while a point was measured."""


def node_name(node: str) -> str:
    return f"node-{node}"


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _post_all(client, bodies: Sequence[tuple[str, dict]], ok: tuple[int, ...] = (200, 201, 202)) -> None:
    """POST each (path, body) in order; an answer outside `ok` raises, naming the object."""
    for path, body in bodies:
        status, data = _request(client, "POST", path, body)
        if status not in ok:
            md = body["metadata"]
            name = f"{md['namespace']}/{md['name']}" if md.get("namespace") else md["name"]
            raise lc.LocalClusterError(f"POST {body['kind']} {name}: HTTP {status}: {data[:300]!r}")


class LocalPoints(LabPoints):
    target_name = "local"

    def __init__(self, job: Job):
        super().__init__(job)
        self.local = self.scenario.local
        self.backend = self.scenario.iptables_backend
        self.cluster: lc.LocalCluster | None = None
        self.proxies: dict[str, lc.KubeProxy] = {}
        self.proxy_mode: str | None = None
        self.proxy_release: str | None = None
        self.proxy_starts = 0
        self.in_api: dict[tuple[str, str], Service] = {}
        self.api_ex: ThreadPoolExecutor | None = None
        self.api_client: Any = None  # the kubernetes ApiClient, made on the API thread
        self.kube_service: Service | None = None
        self.fid_ns: str | None = None
        self.env: dict | None = None
        self._dps: dict[str, dict[str, ApiDataplane]] = {}

    # -- lifetime -----------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        if self.job.get("local_cluster"):  # in a UML guest: the host runs etcd + kube-apiserver
            self.cluster = lc.GuestCluster(self.job.get("local_cluster"), self.job.tag)
            emit(
                "log",
                message=f"local: reaching the host's kube-apiserver {self.cluster.server} over the TAP link",
            )
            self.cluster.start()
            emit("log", message=f"local: apiserver reachable from the guest in {time.monotonic() - t0:.1f} s")
        else:
            from harness.targets.local_binaries import binaries_for

            binaries = binaries_for(self.scenario.kube_proxy_version)  # local.kube_version is folded into it
            emit("log", message=f"local: starting etcd + kube-apiserver ({binaries.kube_apiserver})")
            self.cluster = lc.LocalCluster(
                tag=self.job.tag,
                binaries=binaries,
                service_cidr=self.scenario.lab.service_cidr,
                apiserver_args=list(self.local.apiserver_args),
                ready_timeout=self.local.ready_timeout_s,
            )
            self.cluster.start()  # LocalClusterError with the log tail if it does not come up
            emit("log", message=f"local: apiserver ready in {time.monotonic() - t0:.1f} s")
        super().start()
        cluster, lab = self.cluster, self.running_lab()
        for n in self.model.spec.nodes:
            cluster.attach_node(lab.node_ns(n))
            lc.create_node(cluster.api, node_name(n), lab.node_ip(n), pod_cidr=self.model.node_pod_cidr(n))
        self.api_ex = api_ex = cluster.api.executor(1)
        self.api_client = api_ex.submit(cluster.api.client).result()
        self.kube_service = self._kubernetes_service()
        lc.ensure_namespaces(cluster.api, {self.model.service(0).namespace})
        self._service_cidr_objects()
        self.env = self._backend_env()

    def stop(self) -> None:
        self.stop_proxies()
        if self.cluster is not None:
            self.cluster.keep_logs(
                self.run_dir / "local-logs",
                prefix="guest-" if isinstance(self.cluster, lc.GuestCluster) else "",
            )
        if self.api_client is not None:
            self.api_client.close()
            self.api_client = None
        if self.api_ex is not None:
            self.api_ex.shutdown(wait=False)
            self.api_ex = None
        if self.cluster is not None:
            self.cluster.stop()
        if self.fid_ns:
            netns.delete(self.fid_ns)
            self.fid_ns = None
        super().stop()

    def running_cluster(self) -> lc.LocalCluster:
        """The etcd + kube-apiserver start() brought up (or reached, in a guest)."""
        assert self.cluster is not None, "start() first"
        return self.cluster

    def _backend_env(self) -> dict:
        """A PATH whose iptables* are the scenario's backend (kube-proxy runs plain `iptables`)."""
        workdir = self.running_cluster().workdir
        assert workdir is not None, "the cluster's start() makes its workdir"
        d = workdir / f"iptables-{self.backend}"
        d.mkdir(exist_ok=True)
        for fam in ("iptables", "ip6tables"):
            for suffix in ("", "-save", "-restore"):
                real = shutil.which(f"{fam}-{self.backend}{suffix}")
                if real is None:
                    raise LabError(f"{fam}-{self.backend}{suffix} not found: install iptables (make setup)")
                link = d / f"{fam}{suffix}"
                if not link.exists():
                    link.symlink_to(real)
        if not os.path.exists("/proc/modules"):
            # a kernel without module support (the kpbench UML kernel: everything built in) has no
            # /lib/modules/<release>/modules.builtin, so `modprobe ip_vs` fails there, and
            # `kube-proxy --cleanup` then skips its whole IPVS pass (it checks with modprobe first).
            # What modprobe answers for a built-in module on any distribution kernel: success.
            shim = d / "modprobe"
            shim.write_text(
                "#!/bin/sh\n# kpbench: no loadable modules in this kernel; all are built in\nexit 0\n"
            )
            shim.chmod(0o755)
        return {**os.environ, "PATH": f"{d}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    def _kubernetes_service(self) -> Service | None:
        """default/kubernetes as kube-proxy sees it (the apiserver's own Service and slice)."""

        def get(client, path):
            status, data = _request(client, "GET", path)
            return json.loads(data) if status == 200 else None

        deadline = time.monotonic() + 30
        while True:
            svc = self.api(get, "/api/v1/namespaces/default/services/kubernetes")
            sl = self.api(get, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
            if svc and sl:
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
        p = svc["spec"]["ports"][0]
        sl_port = next(
            (q["port"] for q in sl.get("ports") or [] if q.get("name") == p.get("name")),
            p.get("targetPort", p["port"]),
        )
        eps = tuple(Endpoint(a, int(sl_port), "") for e in sl.get("endpoints") or [] for a in e["addresses"])
        return Service(
            index=-1,
            namespace="default",
            name="kubernetes",
            cluster_ip=svc["spec"]["clusterIP"],
            ports=(
                ServicePort(
                    name=p.get("name", ""),
                    port=p["port"],
                    target_port=int(sl_port),
                    protocol=p.get("protocol", "TCP").lower(),
                ),
            ),
            endpoints=eps,
        )

    def _service_cidr_objects(self) -> None:
        """With the flat allocator (MultiCIDRServiceAllocator=false) the apiserver creates no
        ServiceCIDR and its bootstrap RBAC does not let kube-proxy read them, so kube-proxy 1.34
        would not know the service CIDR (nftables: no "drop traffic to unallocated ClusterIPs"
        rule). Give it what an upstream-default 1.34 apiserver gives it."""
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        objs: list[tuple[str, dict]] = [
            (
                "/apis/networking.k8s.io/v1/servicecidrs",
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "ServiceCIDR",
                    "metadata": {"name": "kubernetes"},
                    "spec": {"cidrs": [self.scenario.lab.service_cidr]},
                },
            ),
            (
                f"{rbac}/clusterroles",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "kpbench:kube-proxy-servicecidrs"},
                    "rules": [
                        {
                            "apiGroups": ["networking.k8s.io"],
                            "resources": ["servicecidrs"],
                            "verbs": ["get", "list", "watch"],
                        }
                    ],
                },
            ),
            (
                f"{rbac}/clusterrolebindings",
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "kpbench:kube-proxy-servicecidrs"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "kpbench:kube-proxy-servicecidrs",
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-proxy"}
                    ],
                },
            ),
        ]

        def run(client):
            status, data = _request(client, "GET", "/apis/networking.k8s.io/v1/servicecidrs")
            if status != 200 or json.loads(data).get("items"):
                return  # not served, or the apiserver made its own
            _post_all(client, objs, ok=(200, 201, 409))

        self.api(run)

    # -- the API ------------------------------------------------------------------------------
    def api(self, fn, *args):
        """fn(ApiClient, *args) on the worker's API thread (it lives in the API namespace)."""
        return self._api_executor().submit(fn, self.api_client, *args).result()

    def _api_executor(self) -> ThreadPoolExecutor:
        assert self.api_ex is not None, "start() first"
        return self.api_ex

    def _node_names(self) -> dict[str, str]:
        return {n: node_name(n) for n in self.model.spec.nodes}

    def _slices(self, svc: Service, trigger: bool) -> list[dict]:
        bodies = lc.endpoint_slice_bodies(svc, self._node_names())
        if trigger:  # what the EndpointSlice controller sets; kube-proxy's network programming latency
            t = _now_rfc3339()
            for b in bodies:
                b["metadata"].setdefault("annotations", {})[TRIGGER_ANNOTATION] = t
        return bodies

    def api_create(self, svc: Service, trigger: bool = False) -> None:
        ns = svc.namespace
        bodies = [(f"/api/v1/namespaces/{ns}/services", lc.service_body(svc))]
        bodies += [
            (f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", b)
            for b in self._slices(svc, trigger)
        ]

        self.api(_post_all, bodies)
        self.in_api[(ns, svc.name)] = svc

    def api_update(self, svc: Service, trigger: bool = False) -> None:
        ns = svc.namespace
        old = self.in_api.get((ns, svc.name))
        new_bodies = self._slices(svc, trigger)
        old_names = (
            {b["metadata"]["name"] for b in lc.endpoint_slice_bodies(old, self._node_names())}
            if old
            else set()
        )

        def run(client):
            for b in new_bodies:
                name = b["metadata"]["name"]
                base = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
                if name in old_names:
                    patch = {
                        "metadata": {"annotations": b["metadata"].get("annotations") or {}},
                        "endpoints": b["endpoints"],
                        "ports": b["ports"],
                    }
                    status, data = _request(
                        client, "PATCH", f"{base}/{name}", patch, content_type="application/merge-patch+json"
                    )
                else:
                    status, data = _request(client, "POST", base, b)
                if status not in (200, 201):
                    raise lc.LocalClusterError(
                        f"updating EndpointSlice {ns}/{name}: HTTP {status}: {data[:300]!r}"
                    )
            for name in old_names - {b["metadata"]["name"] for b in new_bodies}:
                _request(client, "DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}")

        self.api(run)
        self.in_api[(ns, svc.name)] = svc

    def api_delete(self, svc: Service) -> None:
        """DELETE the Service (the change kube-proxy acts on; the call returns then), then its
        EndpointSlices on the same API thread without waiting (no controller-manager here to
        garbage-collect them): the next API call runs after them."""
        ns = svc.namespace
        old = self.in_api.get((ns, svc.name), svc)
        names = [b["metadata"]["name"] for b in lc.endpoint_slice_bodies(old, self._node_names())]

        def run(client):
            status, data = _request(client, "DELETE", f"/api/v1/namespaces/{ns}/services/{svc.name}")
            if status not in (200, 202, 404):
                raise lc.LocalClusterError(f"DELETE Service {ns}/{svc.name}: HTTP {status}: {data[:300]!r}")

        def slices(client):
            for name in names:
                _request(client, "DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}")

        self.api(run)
        self._api_executor().submit(slices, self.api_client)
        self.in_api.pop((ns, svc.name), None)

    def reconcile(self, services: Sequence[Service]) -> lc.CreateStats | None:
        """Make the API hold exactly `services`: create the missing ones (in bulk, at the scenario's
        rate and concurrency), undo endpoint changes, delete the extra ones."""
        want = {(s.namespace, s.name): s for s in services}
        for key, s in list(self.in_api.items()):
            if key not in want:
                self.api_delete(s)
        for key, s in want.items():
            if key in self.in_api and self.in_api[key].endpoints != s.endpoints:
                self.api_update(s)
        missing = [s for key, s in want.items() if key not in self.in_api]
        if not missing:
            return None
        stats = lc.create_services(
            self.running_cluster().api,
            missing,
            qps=self.local.create_qps,
            concurrency=self.local.create_concurrency,
            node_names=self._node_names(),
        )
        for s in missing:
            self.in_api[(s.namespace, s.name)] = s
        return stats

    # -- kube-proxy ---------------------------------------------------------------------------
    def stop_proxies(self) -> None:
        for kp in self.proxies.values():
            try:
                kp.stop()
            except (
                subprocess.TimeoutExpired
            ):  # alive even after SIGKILL: stop the others; its namespace goes at stop()
                pass
        self.proxies = {}
        self.proxy_mode = None

    def proxy_cleanup(self, nodes: Sequence[str] | None = None) -> None:
        """`kube-proxy --cleanup` in every node namespace, or those of `nodes` (iptables, ipvs and
        nftables state)."""
        assert self.env is not None, "start() first"
        lab, binaries, path = self.running_lab(), self.running_cluster().binaries, self.env["PATH"]
        for n in self.model.spec.nodes if nodes is None else nodes:
            lc.kube_proxy_cleanup(
                lab.node_ns(n),
                binaries.kube_proxy,
                path=path,
                log=lambda message: emit("log", message=message),
            )

    def start_proxies(self, mode: str) -> None:
        for n in self.model.spec.nodes:
            self.start_proxy(n, mode)
        self.proxy_mode = mode
        self.proxy_release = self.settings.kube_version
        self.proxy_starts += 1

    def start_proxy(self, n: str, mode: str) -> None:
        """kube-proxy of `mode` on node `n` (not waited for; a running one is replaced, not stopped:
        the disruption phase stops node a's itself and restarts it over its rules)."""
        cluster, lab = self.running_cluster(), self.running_lab()
        self.proxies[n] = cluster.start_kube_proxy(
            lab.node_ns(n),
            node_name(n),
            mode,
            wait_ready=0,
            env=self.env,
            binary=self.kube_proxy_binary(),
            cluster_cidr=self.scenario.lab.pod_cidr,
            sync_period=self.local.sync_period,
            min_sync_period=self.local.min_sync_period,
            ipvs_scheduler=self.scenario.ipvs.scheduler,
            node_port_addresses=self.local.node_port_addresses or None,
        )

    def kube_proxy_binary(self):
        """kube-proxy of the point's release (use_point): a version sweep restarts it per release,
        against the apiserver of the newest release of the sweep."""
        release = self.settings.kube_version
        if release == self.scenario.kube_proxy_version:
            return self.running_cluster().binaries.kube_proxy
        from harness.targets.local_binaries import binaries_for

        return binaries_for(release).kube_proxy

    def proxies_running(self, mode: str) -> bool:
        return (
            self.proxy_mode == mode
            and self.proxy_release == self.settings.kube_version
            and bool(self.proxies)
            and all(kp.alive() for kp in self.proxies.values())
        )

    def ensure_proxies(self, mode: str, restart: bool = False) -> None:
        """kube-proxy of `mode` running on every node: from a clean kernel when another mode (or
        none) ran; `restart`: restarted even if it runs (it then syncs everything from the API)."""
        if self.proxies_running(mode):
            if not restart:
                return
            self.stop_proxies()
        else:
            self.stop_proxies()
            self.proxy_cleanup()
        self.start_proxies(mode)

    def check_proxies(self) -> None:
        for n, kp in self.proxies.items():
            if not kp.alive():
                tail = kp.proc.log_tail(20)
                last = " | ".join(ln.strip() for ln in tail.splitlines()[-3:])[-500:]
                rc = kp.proc.popen.returncode
                how = (
                    f"{rc} ({signal.Signals(-rc).name})"
                    if rc < 0 and -rc in signal.valid_signals()
                    else str(rc)
                )
                err = KubeProxyCrashed(
                    f"kube-proxy ({kp.mode}) on {node_name(n)} exited with status {how}: {last}"
                )
                err.log_tail = tail  # type: ignore[attr-defined]
                raise err
        self.running_cluster().check_alive()

    def programmed_ips(self, node: str, mode: str) -> set[str]:
        """ClusterIPs kube-proxy of `mode` has programmed in `node`'s kernel (read back as the registry says)."""
        rb = mode_spec(mode).read_back
        text = netns.run(
            self.running_lab().node_ns(node), rb.service_ips_argv(self.backend), check=False
        ).stdout
        return set(rb.ip_pattern.findall(text))

    def wait_programmed(self, ips: set[str], nodes: Sequence[str], timeout: float) -> int:
        """Poll until every node's kernel serves every IP of `ips`; returns perf_counter_ns then."""
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        mode = self.proxy_mode
        assert mode is not None, "start_proxies() first"
        while True:
            self.check_proxies()
            pending = [n for n in pending if not ips <= self.programmed_ips(n, mode)]
            if not pending:
                return time.perf_counter_ns()
            if time.monotonic() > deadline:
                have = len(ips & self.programmed_ips(pending[0], mode))
                raise LabError(
                    f"kube-proxy ({self.proxy_mode}) on {node_name(pending[0])}: {have} of "
                    f"{len(ips)} Services programmed after {timeout:.0f} s"
                )
            time.sleep(POLL_S)

    def wait_sync_finished(self, node: str, since: float, timeout: float) -> None:
        """Wait until kube-proxy on `node` reports a sync that ended at or after wall time `since`
        (kubeproxy_sync_proxy_rules_last_timestamp_seconds, set when a sync completes)."""
        key = 'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}'
        deadline = time.monotonic() + timeout
        while True:
            self.check_proxies()
            m = lc.scrape_metrics(self.running_lab().node_ns(node), self.proxies[node].metrics_port)[
                "metrics"
            ]
            last = m.get(key, m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", 0.0))
            if last >= since:
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"kube-proxy ({self.proxy_mode}) on {node_name(node)}: no finished sync "
                    f"{timeout:.0f} s after its rules appeared"
                )
            time.sleep(0.1)

    def kernel_counts(self, node: str, mode: str) -> dict[str, int]:
        return make_dataplane(mode, self.running_lab().node_ns(node), self.settings).counts()

    # -- the worker's hooks -------------------------------------------------------------------
    def use_mode(self, mode: str) -> dict[str, Any]:
        if mode not in MODES:
            raise LabError(f"the local target measures {', '.join(MODES)}, not {mode}")
        if mode not in self._dps:
            self._dps[mode] = {n: ApiDataplane(self, mode, n) for n in self.model.spec.nodes}
        return self._dps[mode]

    def _all_services(self, services: Sequence[Service]) -> list[Service]:
        return list(services) + ([self.kube_service] if self.kube_service else [])

    def sync_full(self, dps, services, ctx: PointContext, out: SampleWriter, status: dict) -> None:
        mode = ctx.mode
        self.stop_proxies()
        self.proxy_cleanup()
        t = time.monotonic()
        stats = self.reconcile(services)
        status["phases"]["api_reconcile_s"] = round(time.monotonic() - t, 2)
        if stats is not None:
            status["api_create"] = stats.as_dict()
            out.extend(
                [
                    ctx.row("api_create_rps", stats.objects_per_s, "rps"),
                    ctx.row("api_create_s", stats.seconds, "s"),
                ]
            )
        ips = {s.cluster_ip for s in self._all_services(services)}
        t0, t_wall = time.perf_counter_ns(), time.time()
        self.start_proxies(mode)
        t_kernel = self.wait_programmed(ips, ["a"], self.local.sync_timeout_s)
        t1 = t_kernel
        last = services[-1] if services else None
        if last is not None and last.endpoints:
            res = self.running_agent().poll(
                last.cluster_ip,
                last.ports[0].port,
                "served",
                interval=0.001,
                timeout=self.local.sync_timeout_s,
                attempt_timeout=0.2,
            )
            if not res["satisfied"]:
                raise LabError(
                    f"kube-proxy ({mode}) programmed {len(ips)} Services but a connect to the last, "
                    f"{last.cluster_ip}:{last.ports[0].port}, failed: {res.get('detail')}"
                )
            t1 = max(t1, res["t_ns"])
        out.extend([ctx.row("sync_full_s", (t1 - t0) / 1e9, "s")])
        status["sync_full"] = {
            "kernel_s": round((t_kernel - t0) / 1e9, 4),
            "served_s": round((t1 - t0) / 1e9, 4),
        }
        self.wait_programmed(ips, [n for n in self.model.spec.nodes if n != "a"], self.local.sync_timeout_s)
        # kube-proxy may still be writing the rest of its first sync (ipvs: the iptables rules come
        # after the ipsets): count what a finished one left. Every Service was in the API before
        # kube-proxy started, so any sync that ended after its start covers them all.
        self.wait_sync_finished("a", since=t_wall, timeout=self.local.sync_timeout_s)
        status["counts"] = self.kernel_counts("a", mode)
        if self.local.fidelity:
            status["fidelity"], status["fidelity_differences"] = self.fidelity(
                mode, services, status["counts"], ctx.point_id
            )

    def _dump(self, ns: str, mode: str) -> str:
        argvs = mode_spec(mode).read_back.dump_argvs(self.backend)
        return "\n".join(netns.run(ns, argv, check=False).stdout for argv in argvs)

    def fidelity(self, mode: str, services, kp_counts: dict, point_id: str) -> tuple[dict, list[str]]:
        """Counts of kube-proxy's state on node a against the lab dataplane's for the same Services;
        both dumps are kept in RUN/fidelity/<point>-{kube-proxy,lab}.txt."""
        if self.fid_ns is None:
            self.fid_ns = netns.ns_name(self.job.tag, "fid")
            netns.create(self.fid_ns)
        dp = make_dataplane(
            mode, self.fid_ns, replace(self.settings, node_ips=(self.running_lab().node_ip("a"),)), node="a"
        )
        d = self.run_dir / "fidelity"
        d.mkdir(exist_ok=True)
        kp_dump = self._dump(self.running_lab().node_ns("a"), mode)
        (d / f"{point_id}-kube-proxy.txt").write_text(kp_dump)
        try:
            dp.full_sync(self._all_services(services))
            lab_counts = dp.counts()
            lab_dump = self._dump(self.fid_ns, mode)
            (d / f"{point_id}-lab.txt").write_text(lab_dump)
        finally:
            dp.cleanup()
        fid = {
            k: {"kube_proxy": kp_counts.get(k), "lab": lab_counts.get(k)}
            for k in sorted(set(kp_counts) | set(lab_counts))
        }
        diffs = [
            f"{k}: kube-proxy {v['kube_proxy']}, lab {v['lab']}"
            for k, v in fid.items()
            if v["kube_proxy"] != v["lab"]
        ]
        # and rule by rule (harness.targets.fidelity lists what is left out as cosmetic)
        diffs += [f"ruleset {x}" for x in fidelity_diff.differences(mode, kp_dump, lab_dump)]
        return fid, diffs

    def sync_one(self, p: JobPoint, ctx: PointContext, services, status: dict) -> list[dict]:
        rows = super().sync_one(p, ctx, services, status)
        apply = {(r["change"], r["seq"]): r["value"] for r in rows if r["metric"] == "sync_apply_s"}
        extra = []
        for r in rows:
            if r["metric"] != "sync_one_s":
                continue
            a = apply.get((r["change"], r["seq"]))
            if a is None:
                continue
            extra.append(
                ctx.row(
                    "program_us",
                    max(0.0, r["value"] - a) * 1e6,
                    "us",
                    seq=r["seq"],
                    timed_out=r["timed_out"],
                    change=r["change"],
                    error=r["error"],
                )
            )
        return rows + extra

    def disrupt(self, p: JobPoint, ctx: PointContext, services, status: dict) -> list[dict]:
        """The disruption phase (harness.pointloop.disruption) with real kube-proxy: node a's
        restarted over its live rules (full), from empty (cold), and one change of each kind through
        the API, phases from kube-proxy's own sync timestamps (harness.targets.local_disruption).
        kube-proxy on node a is a new process afterwards: its kp_* rows count from that restart."""
        from harness.pointloop.disruption import measure_disruption
        from harness.targets.local_disruption import KubeProxySyncs

        syncs = KubeProxySyncs(self, p.mode)
        try:
            return measure_disruption(
                syncs,
                self.running_lab().client_ns,
                services,
                self.model,
                ctx,
                self.scenario.measure.disruption,
                status,
            )
        finally:
            status.setdefault("disruption", {})["kube_proxy_syncs"] = syncs.record
            self.proxy_starts += sum(len(syncs.record.get(k, [])) for k in ("full", "cold"))

    def end_point(self, p: JobPoint, ctx: PointContext, out: SampleWriter, status: dict) -> None:
        self.check_proxies()
        m = lc.scrape_metrics(self.running_lab().node_ns("a"), self.proxies["a"].metrics_port)
        status["kube_proxy"] = {"proxy_mode": m["proxy_mode"], "starts": self.proxy_starts}
        if m["proxy_mode"] != ctx.mode:
            raise LabError(f"kube-proxy on node-a reports mode {m['proxy_mode']!r}, expected {ctx.mode}")
        out.extend(metric_rows(ctx, m["metrics"]))

    def point_failed(self, p: JobPoint, error: Exception) -> dict | None:
        """A kube-proxy that exited fails the point with its log tail; it is restarted for the next."""
        crash = error if isinstance(error, KubeProxyCrashed) else None
        if crash is None:
            try:
                self.check_proxies()
            except KubeProxyCrashed as c:
                crash = c
            except Exception as e:  # noqa: BLE001 - the apiserver went too: recorded as the point's error
                return failed_status(p, self.kernel, e)
        if crash is None:
            return None
        self.stop_proxies()  # the next point starts it again
        return {
            "point_id": p.point_id,
            "kernel": self.kernel,
            "status": "failed",
            "error": f"{type(crash).__name__}: {crash}".splitlines()[0][:800],
            "kube_proxy_log_tail": getattr(crash, "log_tail", ""),
            "traceback": traceback.format_exc(limit=8),
        }


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, LocalPoints)


if __name__ == "__main__":
    raise SystemExit(main())
