"""The lab's PointTarget: the harness's own dataplane renderers program the lab's two nodes.

It builds the lab topology in network namespaces of the kernel it runs on (harness.lab.topology),
programs the mode's dataplane from empty for every point (timed), and probes from the agent in
the client pod's namespace. The local target's worker (harness.targets.local_worker) reuses it
with kube-proxy doing the programming.
"""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from harness.dataplane import make_dataplane
from harness.dataplane.base import DataplaneSettings
from harness.lab.netns import LabError
from harness.measure.adaptive import sync_stop_rule
from harness.model import ModelSpec, build_model
from harness.modes import mode as mode_spec
from harness.pointloop.loop import JobPoint
from harness.pointloop.worker import Job, emit, kernel_label, validation_key
from harness.samples import PointContext, SampleWriter
from harness.scenario import Scenario

if TYPE_CHECKING:
    from harness.lab.topology import Lab
    from harness.measure.agent import Agent


def model_spec(scenario: Scenario, n_services: int) -> ModelSpec:
    """The model of the sweep's largest count, with the most endpoints per Service of the sweep."""
    m, lab = scenario.model, scenario.lab
    return ModelSpec(
        n_services=n_services,
        endpoints=max(scenario.endpoint_counts()),
        ports_per_service=m.ports_per_service,
        service_cidr=lab.service_cidr,
        pod_cidr=lab.pod_cidr,
        pods_per_node=lab.pods_per_node,
        node_ports=min(m.node_ports, n_services),
        affinity=min(m.affinity, n_services),
        seed=scenario.seed,
    )


class LabPoints:
    """PointTarget of the lab: dataplane renderers on the lab's nodes, the local probe agent."""

    target_name = "lab"
    validates = True
    records_phases = True

    def __init__(self, job: Job):
        self.job = job
        self.scenario = job.scenario
        self.run_dir = job.run_dir
        self.kernel = kernel_label(job.kernel)
        n_max = max(p.n_services for p in job.points)
        # the lab's pods come from the model with the most endpoints per Service (its pods serve a
        # superset of the ports of any smaller count's); a point uses its own count's model
        self.model = build_model(model_spec(self.scenario, n_max))
        self.models = {self.model.spec.endpoints: self.model}
        self.lab: Lab | None = None
        self.agent: Agent | None = None
        self.dataplanes: dict[str, Any] = {}

    # -- lab lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        from harness.lab.topology import Lab
        from harness.measure.agent import Agent

        emit(
            "kernel",
            name=self.job.kernel,
            label=self.kernel,
            release=platform.release(),
            machine=platform.machine(),
            # a UML guest's host CPU (harness.lab.uml.host_cpu); absent on the host kernel
            **(
                {"host_cpu": os.environ["KPBENCH_UML_HOST_CPU"]}
                if "KPBENCH_UML_HOST_CPU" in os.environ
                else {}
            ),
        )
        emit("log", message=f"{self.kernel}: building the lab ({len(self.model.pods)} pods, 2 nodes)")
        t0 = time.monotonic()
        self.lab = lab = Lab(self.model, tag=self.job.tag)
        lab.up()
        self.agent = Agent(lab.client_ns)
        emit("log", message=f"{self.kernel}: lab up in {time.monotonic() - t0:.1f} s")
        self.settings = DataplaneSettings(
            cluster_cidr=self.scenario.lab.pod_cidr,
            service_cidr=self.scenario.lab.service_cidr,
            node_ips=tuple(lab.node_ip(n) for n in self.model.spec.nodes),
            iptables_backend=self.scenario.iptables_backend,
            scheduler=self.scenario.ipvs.scheduler,
            kube_version=self.scenario.kube_proxy_version or DataplaneSettings.kube_version,
        )

    def stop(self) -> None:
        for dp in self.dataplanes.values():
            try:
                dp.cleanup()
            except (LabError, OSError):  # lab.down() below deletes the namespaces and their rules with them
                pass
        self.dataplanes = {}
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.lab is not None:
            self.lab.down()
            self.lab = None

    def running_lab(self) -> Lab:
        """The lab start() brought up."""
        assert self.lab is not None, "start() first"
        return self.lab

    def running_agent(self) -> Agent:
        """The measuring agent in the lab's client namespace (start() made it)."""
        assert self.agent is not None, "start() first"
        return self.agent

    def use_mode(self, mode: str) -> dict[str, Any]:
        """Dataplanes of `mode` on every node, with any other mode's state removed first."""
        if self.dataplanes and next(iter(self.dataplanes.values())).mode != mode:
            for dp in self.dataplanes.values():
                dp.cleanup()
            self.dataplanes = {}
        if not self.dataplanes:
            # each node serves NodePorts on its own address only, as kube-proxy does
            lab = self.running_lab()
            self.dataplanes = {
                n: make_dataplane(
                    mode, lab.node_ns(n), replace(self.settings, node_ips=(lab.node_ip(n),)), node=n
                )
                for n in self.model.spec.nodes
            }
        return self.dataplanes

    def use_point(self, p: JobPoint) -> None:
        """The point's release (lab: its ruleset family; dataplanes of another release are
        removed) and its endpoints-per-Service model (a sweep over releases or endpoint counts)."""
        release = p.kube_proxy_version or self.settings.kube_version
        if release != self.settings.kube_version:
            for dp in self.dataplanes.values():
                dp.cleanup()
            self.dataplanes = {}
            self.settings = replace(self.settings, kube_version=release)
        if p.endpoints is not None and p.endpoints != self.model.spec.endpoints:
            if p.endpoints not in self.models:
                self.models[p.endpoints] = build_model(replace(self.model.spec, endpoints=p.endpoints))
            self.model = self.models[p.endpoints]

    def _validation_key(self, mode: str) -> str:
        several = len(self.scenario.releases()) > 1
        return validation_key(self.kernel, mode, self.settings.kube_version if several else "")

    # -- the PointTarget ----------------------------------------------------------------------
    def context(self, p: JobPoint) -> PointContext:
        sc = self.scenario
        return PointContext(
            run_id=self.job.run_id,
            point_id=p.point_id,
            target=self.target_name,
            kernel=self.kernel,
            mode=p.mode,
            iptables_backend=sc.iptables_backend if mode_spec(p.mode).iptables_based else "",
            n_services=p.n_services,
            endpoints=self.model.spec.endpoints,
            rep=p.rep,
            kube_proxy_version=self.settings.kube_version,
        )

    def program(self, p: JobPoint, out: SampleWriter, status: dict) -> tuple[PointContext, Sequence[Any]]:
        ctx = self.context(p)
        services = self.model.services[: p.n_services]
        self.sync_full(self.use_mode(p.mode), services, ctx, out, status)
        return ctx, services

    def sync_full(
        self, dps: dict[str, Any], services, ctx: PointContext, out: SampleWriter, status: dict
    ) -> None:
        """Program `services` from empty on every node; row sync_full_s timed on node a."""
        from harness.measure import sync

        # node a's timed full sync starts from empty (its own cleanup then finds nothing); the
        # other nodes' full_sync cleans up first itself, untimed: a second cleanup would only
        # repeat the read-back (an iptables-save, an ipset list: forks costing ~0.1 s each in UML)
        dps["a"].cleanup()
        out.extend(sync.measure_sync_full(dps["a"], services, ctx))
        for node, dp in dps.items():
            if node != "a":
                dp.full_sync(services)
        status["counts"] = dps["a"].counts()

    def connect(self, p: JobPoint, ctx: PointContext, services: Sequence[Any], status: dict) -> list[dict]:
        from harness.measure import connect

        sc, c = self.scenario, self.scenario.measure.connect
        spent: dict | None = {} if c.adaptive else None
        rows = connect.measure_connect(
            self.running_agent(),
            ctx,
            services,
            len(services),
            samples=c.samples,
            rng=random.Random(sc.seed * 1000 + p.rep),
            timeout=c.timeout_ms / 1000,
            edge_samples=c.edge_samples,
            direct_samples=c.direct_samples,
            adaptive=spent,
        )
        if spent:
            status.setdefault("adaptive", {}).update(spent)
        return rows

    def load_namespace(self) -> str | None:
        return self.running_lab().client_ns

    def sync_one(self, p: JobPoint, ctx: PointContext, services: Sequence[Any], status: dict) -> list[dict]:
        """Rows of the one-change sync measurement, changes made through node a's dataplane."""
        from harness.measure import sync

        s = self.scenario.measure.sync
        kinds = tuple(s.kinds)
        per_kind = s.per_kind(p.sync_per_kind)
        stop = sync_stop_rule(per_kind) if s.adaptive else None
        rows = sync.measure_sync_one(
            self.running_agent(),
            self.use_mode(p.mode)["a"],
            services,
            self.model,
            ctx,
            restore=False,
            samples=per_kind,
            kinds=kinds,
            timeout=s.timeout_s,
            interval=s.poll_interval_ms / 1000,
            max_cpu_share=s.poll_max_cpu_share,
            stop=stop,
        )
        if stop is not None:
            status.setdefault("adaptive", {}).update(stop.summary())
        return rows

    def disrupt(self, p: JobPoint, ctx: PointContext, services: Sequence[Any], status: dict) -> list[dict]:
        """Rows of the disruption phase: the prober in the client namespace while node a's dataplane
        is rewritten (warm full sync) and changed (one change of each kind, undone after)."""
        from harness.pointloop.disruption import LabSyncs, measure_disruption

        return measure_disruption(
            LabSyncs(self.use_mode(p.mode)["a"]),
            self.running_lab().client_ns,
            services,
            self.model,
            ctx,
            self.scenario.measure.disruption,
            status,
        )

    def end_point(self, p: JobPoint, ctx: PointContext, out: SampleWriter, status: dict) -> None:
        """After the last measurement of a point (the lab: nothing)."""

    def point_failed(self, p: JobPoint, error: Exception) -> dict | None:
        return None

    def validation_matrix(self, mode: str) -> dict:
        """The validation matrix of `mode`, its dataplanes cleaned up after (a failing cleanup is
        recorded beside the matrix, not raised); emitted as a "validation" event."""
        from harness.validate import validate_mode

        dps = self.use_mode(mode)
        res = validate_mode(self.running_lab(), self.running_agent(), dps, self.model, self.settings)
        emit("validation", key=self._validation_key(mode), result=res)
        for dp in dps.values():  # a failing cleanup must not hide the matrix: recorded beside it
            try:
                dp.cleanup()
            except Exception as e:  # noqa: BLE001 - recorded beside the matrix
                res.setdefault("cleanup_errors", []).append(f"{type(e).__name__}: {e}"[:300])
        return res

    def validate(self, mode: str) -> dict | None:
        """The validation matrix of `mode` before its first point (its cleanup errors raise)."""
        from harness.validate import validate_mode

        dps = self.use_mode(mode)
        res = validate_mode(self.running_lab(), self.running_agent(), dps, self.model, self.settings)
        for dp in dps.values():
            dp.cleanup()
        emit("validation", key=self._validation_key(mode), result=res)
        return res
