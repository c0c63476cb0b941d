"""The cluster target: the same scenarios on an existing (kubeadm-style) test cluster.

Preflight reads only (permissions, kube-proxy's DaemonSet and ConfigMap, current mode, nodes) and
prints what the run will change; without --yes it stops there (exit 2, nothing changed). A run:

1. saves the original ConfigMap and mode to RUN/cluster-restore.json, before any change;
2. creates namespace kpbench-<run id> (label kpbench.io/run=<id>), a backend Deployment and a probe
   pod on each selected node;
3. per point: switches kube-proxy's mode when needed (harness.cluster.switch), grows or shrinks the
   Service set to N at the configured QPS/burst, then measures from the probe: connect latency
   (connect_us / connect_direct_us as on the lab), rule-present latency of one change (sync_one_s
   change=add / update / delete, each undone), kube-proxy's own sync time from its metrics
   (program_us) and, with measure.disruption on, the disruption phase (cluster_disruption);
4. always (also on failure and Ctrl-C, with Ctrl-C deferred while it runs) restores kube-proxy
   to the original config.conf and mode and deletes everything labelled with the run.

See harness/cluster/* for the pieces; `kpbench restore RUN_DIR` finishes step 4 after a crash.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from harness.cluster import ClusterError, kubeproxy_config as kpc, manifests, namespace_for
from harness.cluster.kube import Connection, Rest, connect
from harness.cluster.options import ClusterOptions, options_from
from harness.cluster.preflight import PreflightReport, planned_changes, run_preflight
from harness.cluster.restore import restore_cluster, restore_path, save_initial, state_from_cluster
from harness.cluster.switch import CM_PATH, ClusterRunError, KubeProxyController, Waits
from harness.modes import mode as mode_spec
from harness.pointloop.loop import PointLoop
from harness.samples import PointContext, SampleWriter

log = logging.getLogger("kpbench")
KERNEL = "cluster"
SWITCH_FAILED = "switch-failed"  # _Session.mode after a switch that raised: the next point switches again


def _kernel_tuple(version: str) -> tuple[int, int]:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


@contextmanager
def deferred_interrupts(say: Callable[[str], None]):
    """Ctrl-C / SIGTERM while restoring are noted and re-raised after the restore finished."""
    got: list[int] = []

    def handler(signum, frame):
        got.append(signum)
        say("kpbench: restoring kube-proxy first; it finishes on its own (`kpbench restore RUN` if killed)")

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        old = {}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class ClusterTarget:
    name = "cluster"

    def __init__(
        self,
        kubeconfig: str | None = None,
        context: str | None = None,
        yes: bool = False,
        *,
        options: ClusterOptions | None = None,
        out: Callable[[str], None] | None = None,
        waits: Callable[[Rest], Waits] | None = None,
    ):
        self.kubeconfig, self.context, self.yes = kubeconfig, context, yes
        self.options = options
        self.out = out or (lambda s: print(s, file=sys.stderr))
        self._waits = waits
        self.conn: Connection | None = None
        self.report: PreflightReport | None = None
        self.server_version = ""

    # ---------------------------------------------------------------------------------- preflight
    def preflight(self, scenario) -> None:
        opts = self.options = self.options or options_from(scenario)
        self.conn = connect(self.kubeconfig, self.context)
        self.server_version = self.conn.version
        self.report = rep = run_preflight(self.conn, server_version=self.server_version)
        probe_nodes = opts.probe_nodes_for(rep.nodes)
        for mode in scenario.modes:
            need = mode_spec(mode).min_node_kernel
            if need is None:
                continue
            old = [n for n in rep.nodes if n.kernel and _kernel_tuple(n.kernel) < need]
            if old:
                raise ClusterError(
                    f"{mode} mode needs kernel >= {need[0]}.{need[1]} but "
                    f"{', '.join(n.name + ' ' + n.kernel for n in old[:4])}"
                    f" run older ones: drop {mode} from --modes"
                )
        if opts.endpoints_via == "slices" and scenario.model.endpoints > opts.backend_replicas_for(
            scenario.model.endpoints
        ):
            raise ClusterError(
                f"{scenario.model.endpoints} endpoints per Service need as many backend pods: "
                "raise the cluster option backend_replicas"
            )
        for line in rep.lines():
            self.out(line)
        self.out("the run will:")
        order = [mode for _, _, mode in scenario.sweep()]  # one kernel per mode: the points' modes
        for line in planned_changes(rep, order, scenario.counts(), opts, scenario.model.endpoints):
            self.out(f"  - {line}")
        if scenario.measure.disruption.enabled:
            from harness.targets.cluster_disruption import planned_disruption

            self.out(f"  - {planned_disruption(scenario.measure.disruption, probe_nodes)}")
        self.out(f"  probe nodes: {', '.join(probe_nodes)}")
        if not self.yes:
            raise ClusterError(
                "refusing to change the cluster without --yes: the run would edit kube-proxy's "
                "ConfigMap and restart it as listed above; re-run with --yes to allow it "
                "(nothing was changed)"
            )

    def plan(self, scenario) -> dict[str, list[str]]:
        return {m: [KERNEL] for m in scenario.modes}

    def environment(self, kernel_plan) -> dict:
        rep = self.report
        nodes = [
            {"name": n.name, "kernel": n.kernel, "kubelet": n.kubelet, "os": n.os_image}
            for n in (rep.nodes if rep else [])
        ]
        return {
            "kernels": [{"name": KERNEL, "nodes": nodes, "release": sorted({n["kernel"] for n in nodes})}],
            "tools": {
                "kubernetes": self.server_version,
                "kube-proxy-image": rep.kube_proxy.image if rep else "",
                "kpbench-image": self.options.image if self.options else "",
            },
        }

    # ----------------------------------------------------------------------------------- the run
    def run_points(self, run, points, sink) -> None:
        if self.conn is None or self.report is None:
            self.preflight(run.scenario)
        conn, rep, opts = self.conn, self.report, self.options
        assert conn is not None and rep is not None and opts is not None, "preflight() sets all three"
        rest = Rest(conn.api)
        run_id = run.meta.get("run_id") or run.dir.name
        ns = namespace_for(run_id)
        path = restore_path(run.dir)
        cm = rest.get(CM_PATH)
        found = state_from_cluster(run_id, ns, conn, cm, rep.kube_proxy, rep.node_modes())
        found.cleanup_always = opts.cleanup == "always"
        state = save_initial(path, found)
        waits = (
            self._waits(rest)
            if self._waits
            else Waits(
                rest,
                self.out,
                rollout_timeout_s=opts.rollout_timeout_s,
                cleanup_timeout_s=opts.cleanup_timeout_s,
            )
        )
        ctl = KubeProxyController(
            rest,
            state,
            path,
            waits=waits,
            log=self.out,
            sync=opts.sync(),
            namespace_wait_s=opts.namespace_wait_s,
        )
        sink(
            {
                "event": "plan",
                "total": len(run.meta.get("points", [])),
                "done": len(run.meta.get("points", [])) - len(points),
            }
        )
        old_term = None
        try:
            old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:
            pass
        failure: BaseException | None = None
        try:
            _Session(self, run, rest, ctl, state, ns, sink).run(points)
        except BaseException as e:
            failure = e
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            with deferred_interrupts(self.out) as got:
                try:
                    restore_cluster(ctl, state, path, log=self.out)
                    self.out(f"kube-proxy restored to {state.original_mode}; run objects deleted")
                except BaseException as e:
                    self.out(
                        f"kpbench: RESTORE FAILED ({type(e).__name__}: {e}); finish it with "
                        f"`kpbench restore {run.dir}`"
                    )
                    if failure is None:
                        if not isinstance(e, Exception):
                            raise
                        # one line, exit status 2: what failed and the command that finishes it
                        raise ClusterError(
                            f"kube-proxy was not restored ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}): finish it with "
                            f"`kpbench restore {run.dir}`"
                        ) from None
            if got and failure is None:
                raise KeyboardInterrupt


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _Session:
    """One run's objects and measurements (everything between save and restore): the cluster's
    PointTarget, whose points the one point loop (harness.pointloop) measures."""

    target_name = KERNEL
    kernel = KERNEL
    validates = False  # the validation matrix needs the lab's namespaces
    records_phases = False  # a point's phases here: mode_switch_s and create_s

    def __init__(
        self, target: ClusterTarget, run, rest: Rest, ctl: KubeProxyController, state, ns: str, sink
    ):
        from harness.cluster.load import ClusterLoad
        from harness.cluster.objects import ObjectStore

        self.t, self.rundata, self.rest, self.ctl, self.state, self.ns, self.sink = (
            target,
            run,
            rest,
            ctl,
            state,
            ns,
            sink,
        )
        assert target.options is not None and target.report is not None and target.conn is not None, (
            "run_points() ran preflight()"
        )
        self.opts: ClusterOptions = target.options
        self.report: PreflightReport = target.report
        self.conn: Connection = target.conn
        self.sc = run.scenario
        self.store = ObjectStore(
            rest, ns, state.run_id, qps=self.opts.qps, burst=self.opts.burst, workers=self.opts.create_workers
        )
        self.mode: str | None = None  # None: kube-proxy still runs the original config (not ours yet)
        self.not_rolled: list[str] = []  # nodes the last switch could not roll (NotReady)
        self.agents: dict[str, Any] = {}
        self.endpoints: list[tuple[str, str | None]] = []
        self.next_index = 0
        self.loadgen = ClusterLoad(
            rest,
            ns,
            state.run_id,
            self.opts.image,
            self.opts.locust_workers,
            start_timeout_s=self.opts.ready_timeout_s,
            log=target.out,
        )
        self.probe: Any = None  # the point's probe agent, its kube-proxy metrics reader and first reading
        self.scrape: Callable[[], dict] | None = None
        self.before: dict | None = None

    def setup(self) -> None:
        from harness.cluster.nodecheck import check_nodes

        opts, sc = self.opts, self.sc
        self.store.ensure_namespace()
        # before kube-proxy is touched: every node's kernel has what the scenario's modes need
        check_nodes(
            self.rest,
            self.ns,
            self.state.run_id,
            opts.image,
            self.report.nodes,
            sc.modes,
            timeout_s=opts.ready_timeout_s,
        )
        replicas = opts.backend_replicas_for(sc.model.endpoints)
        self.store.create_backend(opts.image, replicas)
        for node in opts.probe_nodes_for(self.report.nodes):
            self.store._create(
                f"/api/v1/namespaces/{self.ns}/pods",
                manifests.probe_pod(self.ns, self.state.run_id, node, opts.image),
            )
        self._wait_ready(replicas)

    def _wait_ready(self, replicas: int) -> None:
        deadline = time.monotonic() + self.opts.ready_timeout_s
        while True:
            self.endpoints = self.store.backend_endpoints()
            probes = self._ready_probes()
            if len(self.endpoints) >= replicas and len(probes) == len(
                self.opts.probe_nodes_for(self.report.nodes)
            ):
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"backend/probe pods not ready after {self.opts.ready_timeout_s:.0f}s "
                    f"({len(self.endpoints)}/{replicas} backends, {len(probes)} probes): is image "
                    f"{self.opts.image} pullable on the nodes? (docker build -t kpbench . and push; on the "
                    "offline test cluster: make cluster-images, imported by kpbench cluster up)"
                )
            time.sleep(2)

    def _ready_probes(self) -> dict[str, str]:
        from harness.cluster.objects import role_selector

        pods = self.rest.get(
            f"/api/v1/namespaces/{self.ns}/pods",
            query={"labelSelector": role_selector(self.state.run_id, "probe")},
        )["items"]
        return {
            p["spec"]["nodeName"]: p["metadata"]["name"]
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
        }

    def agent(self):
        from harness.cluster.probe import RemoteAgent

        node, pod = sorted(self._ready_probes().items())[0]
        if node not in self.agents:
            self.agents[node] = RemoteAgent(self.conn.api, self.ns, pod)
        return node, pod, self.agents[node]

    def ensure_services(self, n: int) -> None:
        have = len(self.store.services)
        if n > have:
            st = self.store.create_services(
                self.next_index,
                self.next_index + n - have,
                selector=self.opts.endpoints_via == "selector",
                endpoints=self.endpoints,
                per_service=max(1, self.sc.model.endpoints),
            )
            self.next_index += n - have
            self.sink(
                {
                    "event": "log",
                    "message": f"created {st.objects} objects in {st.seconds:.0f}s ({st.rate:.1f}/s)",
                }
            )
        elif n < have:
            self.store.delete_services([s.name for s in self.store.services[n:]])

    def run(self, points) -> None:
        self.setup()
        try:
            PointLoop(self, self.sc, self.rundata.dir, self.sink).run(points)
        finally:
            for a in self.agents.values():
                a.close()

    # -- the PointTarget: kube-proxy's DaemonSet programs, the probe pod probes -----------------
    def start(self) -> None:
        """Nothing: run() sets the run's objects up."""

    def stop(self) -> None:
        """Nothing: the target restores kube-proxy and deletes the run's objects."""

    def validate(self, mode: str) -> dict | None:
        return None

    def load_namespace(self) -> str | None:
        return None  # no local client namespace: the load generator runs in the cluster (load)

    def load(self, p, ctx: PointContext, svcs, keepalive: bool):
        """One load phase: distributed locust (a master, `locust_workers` workers) in the cluster."""
        L = self.sc.measure.load
        return self.loadgen.run(
            ctx,
            [(s.cluster_ip, s.port) for s in svcs],
            users=L.users,
            rate=L.rate,
            duration=L.duration_s,
            timeout=L.timeout_s,
            keepalive=keepalive,
        )

    def disrupt(self, p, ctx: PointContext, svcs, status: dict) -> list[dict]:
        """The disruption phase (measure.disruption): a prober in a pod on the probed node while its
        kube-proxy restarts and Services change (harness.targets.cluster_disruption)."""
        from harness.targets.cluster_disruption import disrupt

        return disrupt(self, p, ctx, svcs, status)

    def point_failed(self, p, error: Exception) -> dict | None:
        return None

    def program(self, p, out: SampleWriter, status: dict) -> tuple[PointContext, list]:
        """kube-proxy in the point's mode (switched when needed), the Service set grown or shrunk
        to N, then wait until the last Service is served and read kube-proxy's metrics."""
        from harness.cluster.probe import scrape_node, scrape_via_probe

        sc, ms = self.sc, self.sc.measure
        if p.mode != self.mode:
            t = time.monotonic()
            running = self.mode or self.state.original_mode
            if self.mode == SWITCH_FAILED:  # any mode the nodes may run: the one needing a cleanup first
                maybe = self.state.modes_possibly_running
                running = next((m for m in maybe if kpc.needs_cleanup(m, p.mode)), maybe[-1])
            self.mode = SWITCH_FAILED  # until the switch returns
            status["node_modes"] = modes = self.ctl.switch(
                running, p.mode, sc.ipvs.scheduler if mode_spec(p.mode).takes_scheduler else None
            )
            self.mode = p.mode
            self.not_rolled = [n for n, m in modes.items() if m.startswith("not rolled")]
            status["phases"]["mode_switch_s"] = round(time.monotonic() - t, 2)
        if self.not_rolled:  # a node whose kubelet is down still runs the previous mode
            raise ClusterRunError(
                f"kube-proxy on {', '.join(self.not_rolled)} did not switch to {p.mode} (node NotReady: "
                "kubelet down); the point would measure a cluster running two modes"
            )
        t = time.monotonic()
        self.ensure_services(p.n_services)
        status["phases"]["create_s"] = round(time.monotonic() - t, 2)
        ctx = PointContext(
            run_id=self.state.run_id,
            point_id=p.point_id,
            target="cluster",
            kernel=KERNEL,
            mode=p.mode,
            iptables_backend="",
            n_services=p.n_services,
            endpoints=sc.model.endpoints,
            rep=p.rep,
        )
        node, pod, agent = self.agent()
        self.probe = agent
        status["probe_node"] = node
        svcs = self.store.services
        last = svcs[-1]
        # every Service programmed: the last one created answers
        res = agent.poll(last.cluster_ip, last.port, "served", timeout=ms.sync.timeout_s * 10)
        if not res.get("satisfied"):
            raise RuntimeError(
                f"the last Service {last.name} was not served within {ms.sync.timeout_s * 10:.0f}s"
            )
        port = kpc.metrics_port(kpc.with_mode({}, p.mode, self.opts.sync()))

        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        def scrape() -> dict:
            try:
                return scrape_node(self.rest, node, port)
            except (ApiException, HTTPError, OSError):  # node proxy cannot reach the port: ask the probe pod
                return scrape_via_probe(self.conn.api, self.ns, pod, port)

        self.scrape = scrape
        try:
            self.before = scrape()
        except Exception as e:  # noqa: BLE001 - no first scrape, no sync delta: this point has no program_us, and says why
            self.before = None
            status["flags"]["metrics"] = f"kube-proxy metrics not scraped: {e}"[:200]
        return ctx, svcs

    def connect(self, p, ctx: PointContext, svcs, status: dict) -> list[dict]:
        from harness.measure.connect import run_plan

        rng = random.Random(self.sc.seed + p.rep)
        c = self.sc.measure.connect
        plan = [(*_addr(rng.choice(svcs)), "random") for _ in range(c.samples)]
        plan += [
            x for _ in range(c.edge_samples) for x in ((*_addr(svcs[0]), "first"), (*_addr(svcs[-1]), "last"))
        ]
        plan += [
            (ip, manifests.BACKEND_PORT, "direct")
            for ip, _ in (
                rng.choice(self.endpoints) for _ in range(c.direct_samples if self.endpoints else 0)
            )
        ]
        rng.shuffle(plan)
        timeout = c.timeout_ms / 1000
        seq: dict[str, int] = {}
        rows = []
        for (_ip, _prt, kind), (us, err) in zip(plan, run_plan(self.probe, plan, timeout), strict=True):
            k = seq.get(kind, 0)
            seq[kind] = k + 1
            v = timeout * 1e6 if err else us
            if kind == "direct":
                rows.append(ctx.row("connect_direct_us", v, "us", seq=k, timed_out=bool(err), path="pod"))
            else:
                rows.append(
                    ctx.row(
                        "connect_us", v, "us", seq=k, timed_out=bool(err), position=kind, path="clusterip"
                    )
                )
        return rows

    def sync_one(self, p, ctx: PointContext, svcs, status: dict) -> list[dict]:
        """One-change syncs of the scenario's kinds (add, update, delete; harness.measure.sync's
        meanings), timed by the probe pod's poller, each change undone so that N stays the same.
        As on the other targets `samples` is per point, spread over the kinds, and with `adaptive`
        a cap: rounds in spread order until every kind's median CI is within +-5%."""
        from harness.measure.adaptive import spread_order, sync_stop_rule

        s = self.sc.measure.sync
        kinds = [k for k in s.kinds if k == "add" or svcs]
        if "update" in kinds and not self._can_update():
            kinds.remove("update")
            status["flags"]["sync_update"] = (
                "no update measured: it moves a Service's EndpointSlice to a backend pod the "
                "Service did not use (cluster option endpoints_via=slices and a backend pod more "
                "than model.endpoints)"
            )
        if not kinds:
            return []
        per_kind = s.per_kind(getattr(p, "sync_per_kind", None), len(kinds))
        stop = sync_stop_rule(per_kind) if s.adaptive else None
        measure = {"add": self._sync_add, "update": self._sync_update, "delete": self._sync_delete}
        rows = []
        for j in spread_order(per_kind) if stop is not None else range(per_kind):
            if stop is not None and stop.done():
                break
            for kind in kinds:
                row = measure[kind](self.probe, ctx, j, s.timeout_s, per_kind)
                rows.append(row)
                if stop is not None:
                    stop.add(f"sync_one_s change={kind}", row["value"])
        if stop is not None:
            status.setdefault("adaptive", {}).update(stop.summary())
        return rows

    def _can_update(self) -> bool:
        return self.opts.endpoints_via == "slices" and len(self.endpoints) > max(1, self.sc.model.endpoints)

    def _service_endpoints(self, name: str) -> list[tuple[str, str | None]]:
        """The backend pods a Service of the run uses (ObjectStore.create_services' choice)."""
        k, i = len(self.endpoints), int(name.rsplit("-", 1)[1])
        return [self.endpoints[(i + m) % k] for m in range(max(1, self.sc.model.endpoints))]

    def _set_slices(self, name: str, eps: list[tuple[str, str | None]]) -> None:
        """The Service's EndpointSlices now hold `eps` (a merge patch per slice: one request for up
        to 100 endpoints, so kube-proxy never sees the Service without endpoints)."""
        base = f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices"
        for sl in manifests.endpoint_slices(self.ns, self.state.run_id, name, eps):
            self.rest.merge_patch(f"{base}/{sl['metadata']['name']}", {"endpoints": sl["endpoints"]})

    def _sync_update(self, agent, ctx: PointContext, j: int, timeout_s: float, per_kind: int) -> dict:
        """One updated Service: its endpoints move to backend pods it did not use; done when a GET
        through its ClusterIP is answered by one of them. Undone after (and waited for)."""
        from harness.measure.sync import PHASE, positions

        svcs = self.store.services
        svc = svcs[positions(len(svcs), per_kind, PHASE["update"])[j]]
        old = self._service_endpoints(svc.name)
        pool = [e for e in self.endpoints if e not in old]
        start = j % len(pool)
        new = (pool[start:] + pool[:start])[: min(len(old), len(pool))]
        expect = "backend:" + ",".join(f"{ip}:{manifests.BACKEND_PORT}" for ip, _ in new)
        t_poll = agent.poll_start(svc.cluster_ip, svc.port, expect, timeout=timeout_s, **self._pace())
        try:
            self._set_slices(svc.name, new)
        finally:
            res = agent.poll_result()
        self._set_slices(svc.name, old)
        back = "backend:" + ",".join(f"{ip}:{manifests.BACKEND_PORT}" for ip, _ in old)
        self._wait_for(svc, back, timeout_s, f"after undoing the update of {svc.name}")
        return _sync_row(ctx, res, t_poll, timeout_s, j, "update")

    def _sync_delete(self, agent, ctx: PointContext, j: int, timeout_s: float, per_kind: int) -> dict:
        """One deleted Service: done when its ClusterIP is no longer served (refused, unreachable,
        or unanswered while a Service that stays is answered). Undone after: the Service made
        again under its name (a new ClusterIP; its EndpointSlices stayed), waited until served."""
        from harness.cluster.objects import CreatedService
        from harness.measure.sync import PHASE, positions

        svcs = self.store.services
        idx = positions(len(svcs), per_kind, PHASE["delete"])[j]
        svc = svcs[idx]
        others = [s for s in (svcs[0], svcs[-1]) if s.name != svc.name]
        control = _addr(others[0]) if others else None
        path = f"/api/v1/namespaces/{self.ns}/services"
        t_poll = agent.poll_start(
            svc.cluster_ip, svc.port, "gone", timeout=timeout_s, control=control, **self._pace()
        )
        try:
            self.rest.delete(f"{path}/{svc.name}")
        finally:
            res = agent.poll_result()
        made = self.store._create(
            path,
            manifests.service(
                self.ns, self.state.run_id, svc.name, selector=self.opts.endpoints_via == "selector"
            ),
        )
        svcs[idx] = again = CreatedService(svc.name, made["spec"]["clusterIP"], svc.port)
        self._wait_for(again, "served", timeout_s, f"after undoing the delete of {svc.name}")
        return _sync_row(ctx, res, t_poll, timeout_s, j, "delete")

    def _pace(self) -> dict:
        """The poller's pacing (measure.sync): an attempt every poll_interval_ms, at most
        poll_max_cpu_share of a CPU, so the probe does not take the CPU kube-proxy syncs on."""
        s = self.sc.measure.sync
        return {"interval": s.poll_interval_ms / 1000, "max_cpu_share": s.poll_max_cpu_share}

    def _wait_for(self, svc, expect: str, timeout_s: float, what: str) -> None:
        res = self.probe.poll(svc.cluster_ip, svc.port, expect, timeout=max(timeout_s, 10.0), **self._pace())
        if not res.get("satisfied"):
            raise ClusterRunError(f"{what}: '{expect}' not seen within {max(timeout_s, 10.0):.0f}s")

    def end_point(self, p, ctx: PointContext, out: SampleWriter, status: dict) -> None:
        """kube-proxy's own sync time between the two scrapes (program_us)."""
        from harness.cluster.probe import sync_delta_us

        try:
            assert self.scrape is not None, "begin_point() set the scraper"
            after = self.scrape()
            d = sync_delta_us(self.before, after) if self.before is not None else None
            if d:
                out.write(ctx.row("program_us", d[0], "us", seq=d[1], path="kube-proxy-metrics"))
        except Exception as e:  # noqa: BLE001 - recorded in the point's flags: the point keeps its other samples
            status["flags"]["metrics"] = f"kube-proxy metrics not scraped: {e}"[:200]

    def _sync_add(self, agent, ctx: PointContext, j: int, timeout_s: float, per_kind: int = 1) -> dict:
        """One added Service: created without endpoints (not served), the probe starts polling its
        ClusterIP, then its endpoints are added (EndpointSlice, or the selector). The value is the
        probe's own clock from polling start to the first successful connect: it includes the
        exec stream's one-way latency and the API request (both small next to kube-proxy's sync)."""
        from harness.cluster.objects import service_name

        i = self.next_index
        self.next_index += 1
        name = service_name(i)
        svc = self.store._create(
            f"/api/v1/namespaces/{self.ns}/services",
            manifests.service(self.ns, self.state.run_id, name, selector=False),
        )
        ip = svc["spec"]["clusterIP"]
        t_poll = agent.poll_start(ip, manifests.SERVICE_PORT, "served", timeout=timeout_s, **self._pace())
        try:
            if self.opts.endpoints_via == "selector":
                self.rest.merge_patch(
                    f"/api/v1/namespaces/{self.ns}/services/{name}",
                    {"spec": {"selector": manifests.backend_selector(self.state.run_id)}},
                )
            else:
                k = len(self.endpoints)
                eps = [self.endpoints[(i + m) % k] for m in range(max(1, self.sc.model.endpoints))]
                for sl in manifests.endpoint_slices(self.ns, self.state.run_id, name, eps):
                    self.store._create(f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices", sl)
        finally:
            res = agent.poll_result()
            self.store.delete_services([name])
        return _sync_row(ctx, res, t_poll, timeout_s, j, "add")


def _sync_row(ctx: PointContext, res: dict, t_poll: int, timeout_s: float, j: int, change: str) -> dict:
    """A sync_one_s row: the probe's own clock from polling start to the first attempt that saw the
    change; a change not seen within `timeout_s` is a row of `timeout_s`, timed_out."""
    if not res.get("satisfied"):
        return ctx.row("sync_one_s", timeout_s, "s", seq=j, timed_out=True, change=change, path="clusterip")
    return ctx.row("sync_one_s", (res["t_ns"] - t_poll) / 1e9, "s", seq=j, change=change, path="clusterip")


def _addr(s) -> tuple[str, int]:
    return s.cluster_ip, s.port
