"""The local target: real etcd + kube-apiserver + kube-proxy on this machine, host kernel.

Upstream binaries from `make kube` (or KUBE_BIN_DIR). The points of a run go to one worker,
`python -m harness.targets.local_worker JOB`, a host subprocess that owns the control plane, the
lab namespaces and the kube-proxies (see that module). Rows carry target="local" and the kernel
label `local-<host kernel release>`. IPVS would need the UML guest with a TAP link to the API
namespace: not implemented yet, refused by preflight.
"""

from __future__ import annotations

import os
import shutil

from harness.lab import caps
from harness.lab.netns import LabError
from harness.model import ModelError
from harness.targets.lab import LabTarget, check_capacity, run_host_worker

SUPPORTED_MODES = ("iptables", "nftables")
KERNEL = "local"


class LocalTarget(LabTarget):
    name = "local"
    worker_module = "harness.targets.local_worker"

    def preflight(self, scenario) -> None:
        if os.geteuid() != 0:
            raise LabError("kpbench run --target local needs root (network namespaces, kube-proxy): run it with sudo")
        if "ipvs" in scenario.modes:
            raise LabError("the local target does not do ipvs yet (IPVS needs the UML guest with a TAP link to the "
                           "API namespace, not implemented): use --modes iptables,nftables, or --target lab for ipvs")
        bad = [m for m in scenario.modes if m not in SUPPORTED_MODES]
        if bad:
            raise LabError(f"the local target measures {', '.join(SUPPORTED_MODES)}, not {', '.join(bad)}")
        if scenario.kernel == "uml":
            raise LabError("the local target runs kube-proxy on the host kernel: kernel: uml is not supported (use auto)")
        tools = ["ip", "nginx", "nft", f"iptables-{scenario.iptables_backend}-save",
                 f"iptables-{scenario.iptables_backend}-restore"]
        for tool in tools:
            if not shutil.which(tool):
                raise LabError(f"{tool} not found: run `make setup` (installs iproute2, iptables, nftables, nginx-light)")
        from harness.targets import localcluster as lc

        self._binaries = lc.find_binaries(lc.CACHE_ROOT / "kube" / scenario.local.kube_version / "bin")  # one line: "... not found in ...: run `make kube` ..."
        check_capacity(scenario)
        import ipaddress

        api = ipaddress.ip_network(lc.DEFAULT_API_CIDR)
        for what, cidr in (("lab.service_cidr", scenario.lab.service_cidr), ("lab.pod_cidr", scenario.lab.pod_cidr)):
            if ipaddress.ip_network(cidr).overlaps(api):
                raise ModelError(f"{what} {cidr} overlaps the local API network {api}: choose another range")
        self._plan = {m: [KERNEL] for m in scenario.modes}

    def plan(self, scenario) -> dict[str, list[str]]:
        if self._plan is None:
            self.preflight(scenario)
        return self._plan

    def environment(self, kernel_plan) -> dict:
        tools = dict(caps.tool_versions())
        b = getattr(self, "_binaries", None)
        if b is not None:
            for name in ("etcd", "kube-apiserver", "kube-proxy"):
                try:
                    tools[name] = b.version(name)
                except Exception as e:  # a version string is not worth failing the run
                    tools[name] = f"unknown ({type(e).__name__})"
        return {"kernels": [], "tools": tools}

    def _run_worker(self, run, kernel: str, pts: list, on_line) -> int:
        job, argv = self.write_job(run, KERNEL, pts)
        return run_host_worker(argv, run.dir / f"worker-{KERNEL}.log", on_line, job["tag"])