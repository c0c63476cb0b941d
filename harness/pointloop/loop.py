"""The measurement sequence of one point, written once for the lab, local and cluster targets.

Per point: validation of the mode (once per mode, where the target validates), the full sync
(the target programs the point's N Services, timed), connect probes, the load phases (with and
without keepalive, where the target has a client namespace), the disruption phase (where the
target has `disrupt` and the scenario enables it), the one-change syncs (last: the
changes are not undone) and the target's end-of-point readings; then the status file
RUN/points/<point_id>.json next to the samples RUN/points/<point_id>.jsonl.

What differs between targets (how to program, where to probe) is a `PointTarget`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.jsonfile import write_json
from harness.samples import PointContext, SampleWriter
from harness.scenario import Scenario

Emit = Callable[[dict], None]


@dataclass(frozen=True)
class JobPoint:
    """One point as a worker's job file lists it (the runner's Point, across the process boundary)."""

    point_id: str
    kernel: str
    mode: str
    n_services: int
    rep: int
    order: int = 0
    kube_proxy_version: str = ""  # a version sweep: the point's release ("": the scenario's)
    endpoints: int | None = None  # a sweep over endpoints per Service: the point's count
    sync_per_kind: int | None = None  # a bridge point's one-change syncs per kind (None: the scenario's)


class PointTarget(Protocol):
    """How one target programs a point's Services and where it probes them."""

    target_name: str  # rows' `target` tag
    kernel: str  # rows' and statuses' kernel label
    validates: bool  # run the validation matrix once per mode (scenario `validate`)
    records_phases: bool  # phase events and status["phases"] times of the loop's own phases

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def validate(self, mode: str) -> dict | None:
        """The validation matrix of `mode` (None: not validated)."""

    def program(self, p: JobPoint, out: SampleWriter, status: dict) -> tuple[PointContext, Sequence[Any]]:
        """Bring the dataplane to the point's N Services (rows of the timed full sync, counts in
        `status`); -> the point's row context and its Services."""

    def connect(self, p: JobPoint, ctx: PointContext, services: Sequence[Any], status: dict) -> list[dict]:
        """Connect-latency rows from the target's probe."""

    def load_namespace(self) -> str | None:
        """The client namespace the load generator runs in (None: no local load generator; a
        target with its own has a `load(p, ctx, services, keepalive) -> LoadResult` method)."""

    def sync_one(self, p: JobPoint, ctx: PointContext, services: Sequence[Any], status: dict) -> list[dict]:
        """Rows of the one-change syncs."""

    def end_point(self, p: JobPoint, ctx: PointContext, out: SampleWriter, status: dict) -> None:
        """After the last measurement of a point."""

    def point_failed(self, p: JobPoint, error: Exception) -> dict | None:
        """A failed point's status when the target knows better than the loop (None: the loop's)."""


def failed_status(p: JobPoint, kernel: str, error: BaseException) -> dict:
    """The status of a point that raised `error` (call it while handling the error)."""
    return {
        "point_id": p.point_id,
        "kernel": kernel,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}".splitlines()[0][:500],
        "traceback": traceback.format_exc(limit=8),
    }


class PointLoop:
    """Runs points on a `PointTarget`, writing their samples and statuses under `run_dir`."""

    def __init__(self, target: PointTarget, scenario: Scenario, run_dir: Path, emit: Emit):
        self.target, self.scenario, self.run_dir, self.emit = target, scenario, Path(run_dir), emit
        self.validated: dict[tuple[str, str], dict | None] = {}
        self.loadgen: Any = None  # harness.measure.load.LoadGenerator, kept from point to point

    @contextmanager
    def phase(self, p: JobPoint, name: str, status: dict, key: str) -> Iterator[None]:
        """Time the loop phase `name` into status["phases"][key] (when the target records phases)."""
        if not self.target.records_phases:
            yield
            return
        self.emit({"event": "phase", "point_id": p.point_id, "phase": name})
        t = time.monotonic()
        yield
        status["phases"][key] = round(time.monotonic() - t, 2)

    def run(self, points: Sequence[JobPoint], setup_s: float | None = None) -> None:
        """Measure every point; a point that raises is recorded as failed and the next one runs.
        `setup_s` (the target's start) goes into the first point's phases (plan: projected vs actual)."""
        try:
            self._run(points, setup_s)
        finally:
            if self.loadgen is not None:
                self.loadgen.close()
                self.loadgen = None

    def _run(self, points: Sequence[JobPoint], setup_s: float | None) -> None:
        for p in points:
            self.emit(
                {
                    "event": "point_start",
                    "point_id": p.point_id,
                    "kernel_kind": p.kernel,
                    "kernel": self.target.kernel,
                    "mode": p.mode,
                    "n_services": p.n_services,
                    "rep": p.rep,
                    "order": p.order,
                    "kube_proxy_version": p.kube_proxy_version,
                    "endpoints": p.endpoints,
                }
            )
            t0 = time.monotonic()
            try:
                status = self.run_point(p)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - recorded as the point's failure, the next point runs
                status = self.target.point_failed(p, e) or failed_status(p, self.target.kernel, e)
            status["seconds"] = round(time.monotonic() - t0, 2)
            if setup_s is not None:
                status.setdefault("phases", {})["setup_s"], setup_s = setup_s, None
            status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_json(self.run_dir / "points" / f"{p.point_id}.json", status)
            self.emit(
                {
                    "event": "point_done",
                    "point_id": p.point_id,
                    "status": status["status"],
                    "error": status.get("error"),
                    "seconds": status["seconds"],
                }
            )

    def run_disruption(
        self, p: JobPoint, ctx: PointContext, services: Sequence[Any], out: SampleWriter, status: dict
    ) -> None:
        """The disruption phase (scenario measure.disruption), where the target has one: the prober
        running while the dataplane is reprogrammed (harness.pointloop.disruption)."""
        disrupt = getattr(self.target, "disrupt", None)
        if not self.scenario.measure.disruption.enabled or disrupt is None:
            return
        with self.phase(p, "disruption", status, "disruption_s"):
            out.extend(disrupt(p, ctx, services, status))

    def run_load(
        self,
        p: JobPoint,
        ctx: PointContext,
        services: Sequence[Any],
        ns: str,
        out: SampleWriter,
        status: dict,
    ) -> None:
        """The load phases (one per keepalive variant) from the load-generator process this loop
        keeps (started at its first load, ended when run() ends); adaptive phases record the
        requests they spent and the CI reached in status["adaptive"]."""
        from harness.measure import load

        L = self.scenario.measure.load
        adaptive = L.adaptive and L.min_duration_s < L.duration_s
        if self.loadgen is None or self.loadgen.ns != ns:
            if self.loadgen is not None:
                self.loadgen.close()
            self.loadgen = load.LoadGenerator(ns)
        with self.phase(p, "load", status, "load_s"):
            results = load.measure_loads(
                ns,
                ctx,
                services,
                keepalives=L.keepalive,
                users=L.users,
                rate=L.rate,
                duration=L.duration_s,
                timeout=L.timeout_s,
                seed=self.scenario.seed * 1000 + p.rep,
                min_duration=L.min_duration_s if adaptive else None,
                generator=self.loadgen,
            )
        for keepalive, res in zip(L.keepalive, results, strict=True):
            _record_load(keepalive, res, out, status)
            if adaptive:
                status.setdefault("adaptive", {}).update(load.adaptive_summary(res))

    def run_own_load(
        self,
        p: JobPoint,
        ctx: PointContext,
        services: Sequence[Any],
        own_load: Any,
        out: SampleWriter,
        status: dict,
    ) -> None:
        """The load phases of a target that generates its own load (the cluster's distributed
        locust): one `load` phase, one call per keepalive variant, saturation flagged the same way."""
        with self.phase(p, "load", status, "load_s"):
            results = [(ka, own_load(p, ctx, services, ka)) for ka in self.scenario.measure.load.keepalive]
        for keepalive, res in results:
            _record_load(keepalive, res, out, status)

    def run_point(self, p: JobPoint) -> dict:
        """The measurement sequence of one point -> its status."""
        t, sc, ms = self.target, self.scenario, self.scenario.measure
        status: dict[str, Any] = {
            "point_id": p.point_id,
            "kernel": t.kernel,
            "status": "ok",
            "error": None,
            "flags": {},
            "phases": {},
        }
        with (self.run_dir / "points" / f"{p.point_id}.jsonl").open("w") as fh:
            out = SampleWriter(fh)
            use_point = getattr(t, "use_point", None)  # a version / endpoints sweep: the point's own
            if use_point is not None:
                use_point(p)
            checked = (p.mode, p.kube_proxy_version)  # each release's ruleset family is validated
            if t.validates and sc.validate_first and checked not in self.validated:
                with self.phase(p, "validate", status, "validate_s"):
                    self.validated[checked] = t.validate(p.mode)
            val = self.validated.get(checked)
            if val is not None:
                status["validation"] = {"passed": val["passed"], "failed_cells": val["failed_cells"]}
                if not val["passed"]:
                    status["status"] = "invalid"

            with self.phase(p, "sync_full", status, "sync_full_s"):
                ctx, services = t.program(p, out, status)
            fh.flush()
            with self.phase(p, "connect", status, "connect_s"):
                out.extend(t.connect(p, ctx, services, status))
            fh.flush()

            client_ns = t.load_namespace()
            own_load = getattr(t, "load", None)  # a target with its own load generator (the cluster's)
            if ms.load.enabled and ms.load.keepalive:
                if own_load is not None:
                    self.run_own_load(p, ctx, services, own_load, out, status)
                elif client_ns is not None:
                    self.run_load(p, ctx, services, client_ns, out, status)
            self.run_disruption(p, ctx, services, out, status)
            fh.flush()
            # last: the changes are not undone (each would cost another apply), so the state after
            # this phase is no longer the N Services the other phases measured
            with self.phase(p, "sync_one", status, "sync_one_s"):
                out.extend(t.sync_one(p, ctx, services, status))
            fh.flush()
            t.end_point(p, ctx, out, status)
            status["samples"] = out.count
        return status


def _record_load(keepalive: bool, res: Any, out: SampleWriter, status: dict) -> None:
    """One load phase's rows, and its saturation flag (the reasons and the summary's scalars)."""
    out.extend(res.rows)
    if res.saturated:
        status["flags"].setdefault("saturated", {})[f"keepalive={str(keepalive).lower()}"] = {
            "reasons": res.reasons,
            **{k: v for k, v in res.summary.items() if isinstance(v, (int, float, str))},
        }
