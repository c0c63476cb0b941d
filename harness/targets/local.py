"""The local target: real etcd + kube-apiserver + kube-proxy on this machine.

Upstream binaries from `make kube` (or KUBE_BIN_DIR). The points of one kernel go to one worker,
`python -m harness.targets.local_worker JOB`, which owns the lab namespaces and the kube-proxies
(see that module). Kernels are chosen as for the lab (harness.lab.caps.plan_kernels):

* host ("local"): the worker is a host subprocess and also runs etcd + kube-apiserver, in
  namespace kpb-<tag>-api;
* UML ("local-uml", e.g. for IPVS, which this host's kernel lacks): this process runs etcd +
  kube-apiserver in kpb-<tag>-api, puts a TAP device on its API bridge, and boots the guest inside
  that namespace with the TAP as the guest's vec0; the worker runs in the guest and reaches the
  apiserver through it (harness.targets.localcluster.GuestCluster).

Rows carry target="local" and the kernel label `<kernel>-<release>`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys

from harness.lab import caps
from harness.lab.netns import LabError
from harness.model import ModelError
from harness.targets.lab import LabTarget, check_capacity, run_host_worker, write_guest_log

KERNELS = {"host": "local", "uml": "local-uml"}  # caps' kernel names -> this target's
TAP = "kt0"
UML_IPVS_WARN = 2000  # Services: above this a local ipvs point in UML takes a long time


class LocalTarget(LabTarget):
    name = "local"
    worker_module = "harness.targets.local_worker"

    def preflight(self, scenario) -> None:
        if os.geteuid() != 0:
            raise LabError(
                "kpbench run --target local needs root (network namespaces, kube-proxy): run it with sudo"
            )
        tools = [
            "ip",
            "nginx",
            "nft",
            f"iptables-{scenario.iptables_backend}-save",
            f"iptables-{scenario.iptables_backend}-restore",
        ]
        for tool in tools:
            if not shutil.which(tool):
                raise LabError(
                    f"{tool} not found: run `make setup` (installs iproute2, iptables, nftables, nginx-light)"
                )
        from harness.targets import localcluster as lc
        from harness.targets.local_binaries import binaries_for

        self._binaries = binaries_for(
            scenario.kube_proxy_version
        )  # one line: "... not built: run `make kube ...`"
        for release in scenario.releases():  # a version sweep runs each release's kube-proxy
            binaries_for(release)
        check_capacity(scenario)
        import ipaddress

        api = ipaddress.ip_network(lc.DEFAULT_API_CIDR)
        for what, cidr in (
            ("lab.service_cidr", scenario.lab.service_cidr),
            ("lab.pod_cidr", scenario.lab.pod_cidr),
        ):
            if ipaddress.ip_network(cidr).overlaps(api):
                raise ModelError(f"{what} {cidr} overlaps the local API network {api}: choose another range")
        plan = caps.plan_kernels(scenario.modes, scenario.iptables_backend, scenario.kernel, spread=True)
        self._plan = {m: [KERNELS[k] for k in ks] for m, ks in plan.items()}
        n = max(scenario.counts())
        if KERNELS["uml"] in self._plan.get("ipvs", []) and n > UML_IPVS_WARN:
            # measured (pinned guest): full sync 19 s at 100 Services, 49 s at 300; one change 3-4 s
            hours = n * (0.15 + 0.003 * scenario.measure.sync.samples) / 3600
            print(
                f"kpbench: warning: ipvs runs kube-proxy in the UML guest, where its per-entry `ipset add` "
                f"forks make a full sync cost ~0.15 s per Service: {n} Services take about {hours:.1f} h "
                f"per ipvs point (--modes iptables,nftables or --target lab to avoid)",
                file=sys.stderr,
            )

    def plan(self, scenario) -> dict[str, list[str]]:
        if self._plan is None:
            self.preflight(scenario)
        assert self._plan is not None, "preflight() sets the plan"
        return self._plan

    def environment(self, kernel_plan) -> dict:
        tools = dict(caps.tool_versions())
        b = getattr(self, "_binaries", None)
        if b is not None:
            for name in ("etcd", "kube-apiserver", "kube-proxy"):
                try:
                    tools[name] = b.version(name)
                except Exception as e:  # noqa: BLE001 - converted to "unknown (...)": a version string is not worth failing the run
                    tools[name] = f"unknown ({type(e).__name__})"
        return {"kernels": [], "tools": tools}

    def _run_worker(self, run, kernel: str, pts: list, on_line) -> int:
        if kernel == KERNELS["host"]:
            job, argv = self.write_job(run, kernel, pts)
            return run_host_worker(argv, run.dir / f"worker-{kernel}.log", on_line, job["tag"])
        return self._run_guest_worker(run, kernel, pts, on_line)

    def _run_guest_worker(self, run, kernel: str, pts: list, on_line) -> int:
        """etcd + kube-apiserver here, the worker (kube-proxy, lab, measurements) in a UML guest
        booted inside the API namespace, linked to its bridge by a TAP device."""
        from harness.lab import uml
        from harness.targets import localcluster as lc

        sc = run.scenario
        log_path = run.dir / f"worker-{kernel}.log"
        tag = secrets.token_hex(2)
        jobs = run.dir / ".jobs"
        jobs.mkdir(exist_ok=True)
        # the guest sees the host's files read-only, but not its /tmp: the work dir (certificates,
        # tokens, logs) lives in the run folder, which the guest mounts, and goes at the end
        cluster = lc.LocalCluster(
            tag=tag,
            binaries=self._binaries,
            service_cidr=sc.lab.service_cidr,
            apiserver_args=list(sc.local.apiserver_args),
            ready_timeout=sc.local.ready_timeout_s,
            workdir=jobs,
        )
        on_line(
            json.dumps(
                {"event": "log", "message": f"local: starting etcd + kube-apiserver for the {kernel} guest"}
            )
        )
        try:
            cluster.start()  # LocalClusterError with the log tail if it does not come up
            cluster.add_tap(TAP)
            job, argv = self.write_job(
                run, kernel, pts, tag=tag, extra={"local_cluster": str(cluster.write_connection())}
            )
            bin_dir = self._binaries.kube_proxy.parent
            hidden = any(bin_dir.is_relative_to(t) for t in uml.GUEST_TMPFS)  # the guest has its own /tmp
            res = uml.run_guest(
                run.dir,
                argv,
                on_line=on_line,
                mem=sc.lab.uml_mem,
                timeout=None,
                name=kernel,
                netns=cluster.netns,
                net=[f"{lc.GUEST_UPLINK}:transport=tap,ifname={TAP}"],
                mounts=[bin_dir] if hidden else [],
            )
        finally:
            cluster.keep_logs(run.dir / "local-logs")
            cluster.stop()
        write_guest_log(log_path, res)
        return res.status
