"""The worker: measures a list of points inside one kernel (the host's, or a UML guest's).

    python -m harness.lab.worker JOB.json

It builds the lab topology in network namespaces of the kernel it runs on, and for every point
programs the mode's dataplane from empty (timed), validates it once per mode, measures, and
writes RUN/points/<point_id>.jsonl (samples) and RUN/points/<point_id>.json (status). Events go to
stdout as JSON lines. Only the standard library, pyroute2 and light harness modules are
imported: inside UML every import is slow.
"""

from __future__ import annotations

import json
import platform
import random
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.dataplane import make_dataplane
from harness.dataplane.base import DataplaneSettings
from harness.jsonfile import write_json
from harness.lab.netns import LabError
from harness.model import ModelSpec, build_model
from harness.modes import mode as mode_spec
from harness.samples import PointContext, SampleWriter

_out = sys.stdout


def emit(event: str, **fields: Any) -> None:
    _out.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    _out.flush()


def model_spec(scenario: dict, n_services: int, endpoints: int | None = None) -> ModelSpec:
    m, lab = scenario["model"], scenario["lab"]
    eps = m["endpoints"] if isinstance(m["endpoints"], list) else [m["endpoints"]]
    return ModelSpec(
        n_services=n_services, endpoints=max(eps) if endpoints is None else endpoints, ports_per_service=m["ports_per_service"],
        service_cidr=lab["service_cidr"], pod_cidr=lab["pod_cidr"], pods_per_node=lab["pods_per_node"],
        node_ports=min(m["node_ports"], n_services), affinity=min(m["affinity"], n_services),
        seed=scenario["seed"],
    )


def kernel_label(kernel: str) -> str:
    return f"{kernel}-{platform.release()}"


class Worker:
    target_name = "lab"

    def __init__(self, job: dict):
        self.job = job
        self.scenario = job["scenario"]
        self.run_dir = Path(job["run_dir"])
        self.kernel = kernel_label(job["kernel"])
        n_max = max(p["n_services"] for p in job["points"])
        # the lab's pods come from the model with the most endpoints per Service (its pods serve a
        # superset of the ports of any smaller count's); a point uses its own count's model
        self.model = build_model(model_spec(self.scenario, n_max))
        self.models = {self.model.spec.endpoints: self.model}
        self.lab = None
        self.agent = None
        self.dataplanes: dict[str, Any] = {}
        self.validated: dict[str, dict] = {}

    # -- lab lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        from harness.lab.topology import Lab
        from harness.measure.agent import Agent

        emit("kernel", name=self.job["kernel"], label=self.kernel, release=platform.release(),
             machine=platform.machine())
        emit("log", message=f"{self.kernel}: building the lab ({len(self.model.pods)} pods, 2 nodes)")
        t0 = time.monotonic()
        self.lab = Lab(self.model, tag=self.job["tag"])
        self.lab.up()
        self.agent = Agent(self.lab.client_ns)
        emit("log", message=f"{self.kernel}: lab up in {time.monotonic() - t0:.1f} s")
        self.settings = DataplaneSettings(
            cluster_cidr=self.scenario["lab"]["pod_cidr"], service_cidr=self.scenario["lab"]["service_cidr"],
            node_ips=tuple(self.lab.node_ip(n) for n in self.model.spec.nodes),
            iptables_backend=self.scenario["iptables_backend"], scheduler=self.scenario["ipvs"]["scheduler"],
            kube_version=self.scenario.get("kube_proxy_version") or DataplaneSettings.kube_version,
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

    def use_mode(self, mode: str) -> dict[str, Any]:
        """Dataplanes of `mode` on every node, with any other mode's state removed first."""
        if self.dataplanes and next(iter(self.dataplanes.values())).mode != mode:
            for dp in self.dataplanes.values():
                dp.cleanup()
            self.dataplanes = {}
        if not self.dataplanes:
            # each node serves NodePorts on its own address only, as kube-proxy does
            self.dataplanes = {n: make_dataplane(mode, self.lab.node_ns(n),
                                                 replace(self.settings, node_ips=(self.lab.node_ip(n),)), node=n)
                               for n in self.model.spec.nodes}
        return self.dataplanes

    def use_point(self, p: dict) -> None:
        """The point's release (lab: its ruleset family; dataplanes of another release are
        removed) and its endpoints-per-Service model (a sweep over releases or endpoint counts)."""
        release = p.get("kube_proxy_version") or self.settings.kube_version
        if release != self.settings.kube_version:
            for dp in self.dataplanes.values():
                dp.cleanup()
            self.dataplanes = {}
            self.settings = replace(self.settings, kube_version=release)
        eps = p.get("endpoints")
        if eps is not None and eps != self.model.spec.endpoints:
            if eps not in self.models:
                self.models[eps] = build_model(replace(self.model.spec, endpoints=eps))
            self.model = self.models[eps]

    # -- one point ----------------------------------------------------------------------------
    def run_point(self, p: dict) -> dict:
        from harness.measure import connect, load

        sc, ms = self.scenario, self.scenario["measure"]
        self.use_point(p)
        ctx = PointContext(run_id=self.job["run_id"], point_id=p["point_id"], target=self.target_name,
                           kernel=self.kernel, mode=p["mode"],
                           iptables_backend=sc["iptables_backend"] if mode_spec(p["mode"]).iptables_based else "",
                           n_services=p["n_services"], endpoints=self.model.spec.endpoints, rep=p["rep"],
                           kube_proxy_version=self.settings.kube_version)
        status: dict[str, Any] = {"point_id": p["point_id"], "kernel": self.kernel, "status": "ok",
                                  "error": None, "flags": {}, "phases": {}}
        services = self.model.services[: p["n_services"]]
        rows_path = self.run_dir / "points" / f"{p['point_id']}.jsonl"
        with rows_path.open("w") as fh:
            out = SampleWriter(fh)

            def phase(name: str) -> float:
                emit("phase", point_id=p["point_id"], phase=name)
                return time.monotonic()

            checked = (p["mode"], self.settings.kube_version)  # each release's family is validated
            if sc.get("validate", True) and checked not in self.validated:
                t = phase("validate")
                self.validated[checked] = self.validate(p["mode"])
                status["phases"]["validate_s"] = round(time.monotonic() - t, 2)
            val = self.validated.get(checked)
            if val is not None:
                status["validation"] = {"passed": val["passed"], "failed_cells": val["failed_cells"]}
                if not val["passed"]:
                    status["status"] = "invalid"

            dps = self.use_mode(p["mode"])
            t = phase("sync_full")
            self.sync_full(dps, services, ctx, out, status)
            status["phases"]["sync_full_s"] = round(time.monotonic() - t, 2)

            t = phase("connect")
            c = ms["connect"]
            out.extend(connect.measure_connect(
                self.agent, ctx, services, len(services), samples=c["samples"],
                rng=random.Random(sc["seed"] * 1000 + p["rep"]), timeout=c["timeout_ms"] / 1000,
                edge_samples=c["edge_samples"], direct_samples=c["direct_samples"]))
            status["phases"]["connect_s"] = round(time.monotonic() - t, 2)

            if ms["load"]["enabled"]:
                L = ms["load"]
                for keepalive in L["keepalive"]:
                    t = phase(f"load keepalive={str(keepalive).lower()}")
                    res = load.measure_load(
                        self.lab.client_ns, ctx, services, users=L["users"], rate=L["rate"],
                        duration=L["duration_s"], keepalive=keepalive, timeout=L["timeout_s"],
                        seed=sc["seed"] * 1000 + p["rep"])
                    out.extend(res.rows)
                    if res.saturated:
                        status["flags"].setdefault("saturated", {})[f"keepalive={str(keepalive).lower()}"] = {
                            "reasons": res.reasons, **{k: v for k, v in res.summary.items()
                                                       if isinstance(v, (int, float, str))}}
                    status["phases"][f"load_keepalive_{str(keepalive).lower()}_s"] = round(time.monotonic() - t, 2)
            # last: the changes are not undone (each would cost another apply), so the state after
            # this phase is no longer the N Services the other phases measured
            t = phase("sync_one")
            s = ms["sync"]
            kinds = tuple(s["kinds"])
            per_kind = -(-s["samples"] // len(kinds))  # scenario gives samples per point, spread over kinds
            out.extend(self.sync_one(dps, services, ctx, samples=per_kind, kinds=kinds,
                                     timeout=s["timeout_s"], interval=s["poll_interval_ms"] / 1000))
            status["phases"]["sync_one_s"] = round(time.monotonic() - t, 2)
            self.end_point(p, ctx, out, status)

            status["samples"] = out.count
        return status

    # -- hooks a target's worker overrides (harness.targets.local_worker) ---------------------
    def sync_full(self, dps: dict[str, Any], services, ctx: PointContext, out: SampleWriter,
                  status: dict) -> None:
        """Program `services` from empty on every node; row sync_full_s timed on node a."""
        from harness.measure import sync

        for node, dp in dps.items():
            dp.cleanup()
        out.extend(sync.measure_sync_full(dps["a"], services, ctx))
        for node, dp in dps.items():
            if node != "a":
                dp.full_sync(services)
        status["counts"] = dps["a"].counts()

    def sync_one(self, dps: dict[str, Any], services, ctx: PointContext, **kw) -> list[dict]:
        """Rows of the one-change sync measurement, changes made through node a's dataplane."""
        from harness.measure import sync

        return sync.measure_sync_one(self.agent, dps["a"], services, self.model, ctx, restore=False, **kw)

    def end_point(self, p: dict, ctx: PointContext, out: SampleWriter, status: dict) -> None:
        """After the last measurement of a point (the lab: nothing)."""

    def validate(self, mode: str) -> dict:
        try:
            from harness.validate import validate_mode
        except ImportError:
            return None
        dps = self.use_mode(mode)
        res = validate_mode(self.lab, self.agent, dps, self.model, self.settings)
        for dp in dps.values():
            dp.cleanup()
        release = self.settings.kube_version
        several = len(self.scenario.get("versions") or []) > 1
        emit("validation", key=f"{self.kernel}/{mode}" + (f"/{release}" if several else ""), result=res)
        return res

    def run(self) -> int:
        points = self.job["points"]
        t_setup = time.monotonic()
        self.start()
        setup_s = round(time.monotonic() - t_setup, 2)  # reported with the first point (plan: projected vs actual)
        for p in points:
            emit("point_start", **{**p, "kernel_kind": p["kernel"], "kernel": self.kernel})
            t0 = time.monotonic()
            try:
                status = self.run_point(p)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                status = {"point_id": p["point_id"], "kernel": self.kernel, "status": "failed",
                          "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                          "traceback": traceback.format_exc(limit=8)}
            status["seconds"] = round(time.monotonic() - t0, 2)
            if setup_s is not None:
                status.setdefault("phases", {})["setup_s"], setup_s = setup_s, None
            status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            path = self.run_dir / "points" / f"{p['point_id']}.json"
            write_json(path, status)
            emit("point_done", point_id=p["point_id"], status=status["status"], error=status.get("error"),
                 seconds=status["seconds"])
        return 0


# -- validate only (`kpbench validate`) ----------------------------------------------------------
def run_validate_only(w: Worker) -> int:
    """Job flag "validate_only": build the lab and run the validation matrix once per mode of the
    job's points (no measurements). Each result is emitted as a "validation" event and all are
    written to RUN/validation-<kernel>.json."""
    modes = list(dict.fromkeys(p["mode"] for p in w.job["points"]))
    w.start()
    results: dict[str, Any] = {}
    for mode in modes:
        emit("phase", point_id=f"validate-{mode}", phase="validate")
        key = f"{w.kernel}/{mode}"
        try:
            from harness.validate import validate_mode

            dps = w.use_mode(mode)
            res = validate_mode(w.lab, w.agent, dps, w.model, w.settings)
            emit("validation", key=key, result=res)
            for dp in dps.values():  # a failing cleanup must not hide the matrix: recorded beside it
                try:
                    dp.cleanup()
                except Exception as e:
                    res.setdefault("cleanup_errors", []).append(f"{type(e).__name__}: {e}"[:300])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            res = {"mode": mode, "passed": False, "failed_cells": ["validation crashed"], "cells": [],
                   "no_endpoints_behaviour": None,
                   "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                   "traceback": traceback.format_exc(limit=8)}
            emit("validation", key=key, result=res)
        results[key] = res
    path = w.run_dir / f"validation-{w.job['kernel']}.json"
    write_json(path, results)
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, worker_class: type[Worker] = Worker) -> int:
    """Run the job file argv[0] with `worker_class` (targets subclass Worker)."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    signal.signal(signal.SIGTERM, _terminate)
    w = worker_class(job)
    try:
        return run_validate_only(w) if job.get("validate_only") else w.run()
    except KeyboardInterrupt:
        emit("log", message="worker interrupted; cleaning up")
        return 130
    except LabError as e:
        emit("fatal", error=str(e))
        return 3
    finally:
        w.stop()


if __name__ == "__main__":
    raise SystemExit(main())
