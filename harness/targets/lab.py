"""The lab target: kube-proxy's dataplane reproduced in network namespaces of a real kernel.

Points are grouped by kernel; each group is handed to one worker (harness.pointloop), run as a
host subprocess or inside a UML guest. A worker that dies is recorded against the point it was
measuring and a new one continues with the rest.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from harness.lab import caps
from harness.lab.netns import LabError
from harness.model import ModelError, ModelSpec, build_model

MAX_RESTARTS = 2


class LabTarget:
    name = "lab"

    def __init__(self):
        self._plan: dict[str, list[str]] | None = None

    def preflight(self, scenario) -> None:
        for tool in ("ip", "nginx"):
            if not shutil.which(tool):
                raise LabError(f"{tool} not found: run `make setup` (installs iproute2, nginx-light ...)")
        # spread: iptables and nftables on the host kernel (cheap, and the kernel users run), IPVS in
        # the UML guest, iptables in both as the bridge; modes are compared within one kernel
        self._plan = caps.plan_kernels(
            scenario.modes, scenario.iptables_backend, scenario.kernel, spread=True
        )
        check_capacity(scenario)

    def plan(self, scenario) -> dict[str, list[str]]:
        if self._plan is None:
            self.preflight(scenario)
        assert self._plan is not None, "preflight() sets the plan"
        return self._plan

    def environment(self, kernel_plan) -> dict:
        return {"kernels": [], "tools": caps.tool_versions()}

    def run_points(self, run, points, sink) -> None:
        by_kernel: dict[str, list] = {}
        for p in points:
            by_kernel.setdefault(p.kernel, []).append(p)
        sink(
            {"event": "plan", "total": len(run.meta["points"]), "done": len(run.meta["points"]) - len(points)}
        )
        for kernel, pts in by_kernel.items():
            self._run_group(run, kernel, pts, sink)

    def _run_group(self, run, kernel: str, pts: list, sink) -> None:
        todo = list(pts)
        restarts = 0
        while todo:
            in_flight: dict = {}
            finished: set[str] = set()

            def on_line(line: str, in_flight: dict = in_flight, finished: set[str] = finished) -> None:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    return
                if ev.get("event") == "point_start":
                    in_flight["point"] = ev["point_id"]
                elif ev.get("event") == "point_done":
                    finished.add(ev["point_id"])
                    in_flight.pop("point", None)
                elif ev.get("event") == "fatal":
                    in_flight["fatal"] = ev["error"]
                sink(ev)

            rc = self._run_worker(run, kernel, todo, on_line)
            todo = [p for p in todo if p.point_id not in finished]
            if rc == 0 or not todo:
                return
            if "fatal" in in_flight:
                raise LabError(f"{kernel} worker: {in_flight['fatal']}")
            if rc == 130:
                raise KeyboardInterrupt
            crashed = in_flight.get("point") or todo[0].point_id
            log_tail = _tail(run.dir / f"worker-{kernel}.log")
            _write_failed(
                run.dir, crashed, kernel, f"worker exited with status {rc} while measuring; {log_tail}"
            )
            sink(
                {
                    "event": "point_done",
                    "point_id": crashed,
                    "status": "failed",
                    "error": f"worker exited with status {rc}",
                    "seconds": 0,
                }
            )
            todo = [p for p in todo if p.point_id != crashed]
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise LabError(
                    f"the {kernel} worker died {restarts} times; see {run.dir}/worker-{kernel}.log"
                )

    worker_module = "harness.pointloop"

    def write_job(
        self, run, kernel: str, pts: list, tag: str | None = None, extra: dict | None = None
    ) -> tuple[dict, list[str]]:
        """The worker's job file for `pts` in RUN/.jobs/, and the argv that runs it."""
        job = {
            "run_id": run.meta["run_id"],
            "run_dir": str(run.dir),
            "kernel": kernel,
            "tag": tag or secrets.token_hex(2),
            "scenario": run.meta["scenario"],
            "target": self.name,
            "points": [asdict(p) for p in pts],
            **(extra or {}),
        }
        jobs = run.dir / ".jobs"
        jobs.mkdir(exist_ok=True)
        job_path = jobs / f"{kernel}.json"
        job_path.write_text(json.dumps(job, indent=1))
        return job, [sys.executable, "-m", self.worker_module, str(job_path)]

    def _run_worker(self, run, kernel: str, pts: list, on_line) -> int:
        job, argv = self.write_job(run, kernel, pts)
        log_path = run.dir / f"worker-{kernel}.log"
        if kernel == "host":
            return run_host_worker(argv, log_path, on_line, job["tag"])
        from harness.lab import uml

        res = uml.run_guest(
            run.dir, argv, on_line=on_line, mem=run.scenario.lab.uml_mem, timeout=None, name=kernel
        )
        write_guest_log(log_path, res)
        return res.status


def write_guest_log(log_path: Path, res) -> None:
    """A guest worker's end (exit status, missing modules, stderr and console tails) in its log."""
    with log_path.open("a") as log:
        log.write(f"guest exit {res.status} after {res.elapsed_s:.1f} s (boot {res.boot_s} s)\n")
        if res.modules_missing:
            log.write(f"modules missing: {' '.join(res.modules_missing)}\n")
        log.write(f"--- guest stderr ---\n{res.stderr_tail}\n--- guest console ---\n{res.console_tail}\n")


def check_capacity(scenario) -> None:
    """The sweep's largest count, plus the Services the sync measurements add, fit the CIDR."""
    spec = ModelSpec(
        n_services=0,
        service_cidr=scenario.lab.service_cidr,
        pod_cidr=scenario.lab.pod_cidr,
        pods_per_node=scenario.lab.pods_per_node,
        endpoints=max(scenario.endpoint_counts()),
    )
    model = build_model(spec)
    need = max(scenario.counts()) + scenario.measure.sync.samples + 1
    ips = model._ips
    assert ips is not None  # build_model sets it
    if need > ips.size:
        raise ModelError(
            f"{max(scenario.counts())} Services do not fit in service CIDR "
            f"{scenario.lab.service_cidr} ({ips.size} usable addresses): "
            "use a larger lab.service_cidr or fewer Services"
        )


def run_host_worker(argv, log_path: Path, on_line, tag: str) -> int:
    """Run a worker subprocess in its own process group, feed its stdout lines to on_line; on any
    exit (Ctrl-C included) stop the group and remove the namespaces of `tag`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        try:
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:
                on_line(line)
            return proc.wait()
        except KeyboardInterrupt:
            _stop_group(proc)
            raise
        finally:
            if proc.poll() is None:
                _stop_group(proc)
            _remove_namespaces(tag)


def _remove_namespaces(tag: str) -> None:
    """What a worker killed hard could not remove itself: its namespaces (and their processes)."""
    from harness.lab import netns

    for name in netns.list_namespaces(f"{netns.PREFIX}{tag}-"):
        netns.delete(name)


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no worker log"
    return "last log lines: " + " | ".join(lines[-n:])[-600:]


def _write_failed(run_dir: Path, point_id: str, kernel: str, error: str) -> None:
    path = run_dir / "points" / f"{point_id}.json"
    path.write_text(json.dumps({"point_id": point_id, "kernel": kernel, "status": "failed", "error": error}))


def host_kernel_label() -> str:
    return f"host-{platform.release()}"
