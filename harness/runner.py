"""The scenario runner: plan the sweep, hand points to the target, keep the run folder readable.

A run folder (`results/<UTC timestamp>-<id>/`) is valid at every moment: metadata.json is
rewritten atomically after every point, each finished point is a file under points/, and a
killed run is continued with `kpbench run --resume DIR`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from harness import costmodel as cm, metadata as md, plan as plan_mod
from harness.scenario import Scenario, ScenarioError, load_scenario

RESULTS_DIR = md.REPO / "results"
log = logging.getLogger("kpbench")


@dataclass(frozen=True)
class Point:
    """One cell of the sweep, measured in one kernel."""

    point_id: str
    kernel: str  # "host" | "uml" (lab); "local"/"cluster" targets use their own names
    mode: str
    n_services: int
    rep: int
    order: int
    kube_proxy_version: str = ""  # the release this point's kube-proxy (lab: its ruleset family) is
    endpoints: int | None = None  # endpoints per Service (None: the scenario's single count)
    # one-change syncs per kind of a bridge point (measure.sync.bridge_samples; None: the scenario's)
    sync_per_kind: int | None = None


def point_id(
    kernel: str, mode: str, n: int, rep: int, release: str | None = None, endpoints: int | None = None
) -> str:
    """'host-nftables-1000-r1'; a sweep over releases or endpoint counts adds them:
    'host-nftables-v1.34.12-e2-1000-r1' (single-release ids stay as older runs wrote them)."""
    parts = (
        [kernel, mode] + ([release] if release else []) + ([f"e{endpoints}"] if endpoints is not None else [])
    )
    return "-".join(parts + [str(n), f"r{rep}"])


def plan_points(scenario: Scenario, kernel_plan: dict[str, list[str]]) -> list[Point]:
    """Service count x repetition x (mode, release, endpoints), the combinations interleaved and
    rotated per repetition (a release or endpoint-count sweep is one more axis beside the mode).

    Rotating the order between repetitions keeps slow drift of the machine (thermal, background
    load) from looking like a mode (or release) effect.
    """
    points: list[Point] = []
    # a kernel plan may add a mode (iptables, measured on every kernel as the bridge between them)
    modes = list(scenario.modes) + [m for m in kernel_plan if m not in scenario.modes]
    releases = scenario.releases()
    eps = scenario.endpoint_counts()
    combos = [(m, r, e) for m in modes for r in releases for e in eps]
    bridge = plan_mod.bridge_cells(scenario, kernel_plan)
    bridge_cap = scenario.measure.sync.bridge_per_kind()
    for n in scenario.counts():
        for rep in range(1, scenario.repetitions + 1):
            shift = (rep - 1) % len(combos)
            for mode, rel, e in combos[shift:] + combos[:shift]:
                for kernel in kernel_plan[mode]:
                    pid = point_id(
                        kernel, mode, n, rep, rel if len(releases) > 1 else None, e if len(eps) > 1 else None
                    )
                    cap = bridge_cap if (mode, cm.kernel_kind(kernel)) in bridge else None
                    points.append(Point(pid, kernel, mode, n, rep, len(points), rel, e, cap))
    return points


def new_run_dir(base: Path | None = None) -> Path:
    base = Path(base) if base else RESULTS_DIR
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    d = base / f"{stamp}-{secrets.token_hex(3)}"
    (d / "points").mkdir(parents=True)
    return d


def finished_points(run_dir: Path) -> dict[str, dict]:
    """Point statuses already written by workers (ok, failed or invalid)."""
    out = {}
    for f in sorted((run_dir / "points").glob("*.json")):
        try:
            st = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out[st["point_id"]] = st
    return out


class Run:
    """One run folder and its metadata, updated as points finish."""

    def __init__(self, run_dir: Path, scenario: Scenario, meta: dict):
        self.dir = run_dir
        self.scenario = scenario
        self.meta = meta
        self.over_budget: set[str] = set()  # planned points this invocation does not measure
        self.log_handler = logging.FileHandler(run_dir / "run.log")
        self.log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self.log_handler)
        log.setLevel(logging.INFO)

    @classmethod
    def create(cls, scenario: Scenario, out: Path | None = None) -> Run:
        run_dir = new_run_dir(out)
        resolved = scenario.resolved()
        (run_dir / "scenario.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        meta = md.base_metadata(run_dir.name, resolved, scenario.target)
        run = cls(run_dir, scenario, meta)
        run.save()
        return run

    @classmethod
    def resume(cls, run_dir: Path) -> Run:
        run_dir = Path(run_dir)
        if not (run_dir / "metadata.json").exists() or not (run_dir / "scenario.yaml").exists():
            raise ScenarioError(f"{run_dir}: not a kpbench run folder (no metadata.json / scenario.yaml)")
        meta = md.read_json(run_dir / "metadata.json")
        data = yaml.safe_load((run_dir / "scenario.yaml").read_text())
        scenario = load_scenario(data=data, source=str(run_dir / "scenario.yaml"))
        (run_dir / "points").mkdir(exist_ok=True)
        meta.setdefault("resumed", []).append(md.utcnow())
        return cls(run_dir, scenario, meta)

    def save(self) -> None:
        md.write_json(self.dir / "metadata.json", self.meta)

    def refresh_points(self, planned: list[Point]) -> dict[str, dict]:
        done = finished_points(self.dir)
        rows = []
        for p in planned:
            st = done.get(p.point_id)
            pending = "over_budget" if p.point_id in self.over_budget else "pending"
            rows.append(
                {
                    **asdict(p),
                    "status": st["status"] if st else pending,
                    **({k: v for k, v in st.items() if k not in asdict(p) and k != "status"} if st else {}),
                }
            )
        self.meta["points"] = rows
        self.save()
        return done

    def close(self, status: str) -> None:
        self.meta["status"] = status
        self.meta["ended"] = md.utcnow()
        self.save()
        log.removeHandler(self.log_handler)
        self.log_handler.close()


def discard_partial(run_dir: Path, done: dict[str, dict]) -> None:
    """Samples of a point that never finished are removed so the point is measured again whole."""
    for f in (run_dir / "points").glob("*.jsonl"):
        if f.stem not in done:
            f.unlink()


EventSink = Callable[[dict], None]


class BudgetExceeded(Exception):
    """Raised from the event sink when a point finishes after the budget ran out: the target stops
    its worker (as for Ctrl-C) and the runner marks the points left `over_budget`."""


def prepare_plan(
    scenario: Scenario,
    target,
    budget_text: str | float | None,
    run: Run | None = None,
    budget_flag: str = "--budget",
) -> plan_mod.Plan:
    """The plan of the points still to measure, fitted into the budget (BudgetError: exit 2,
    nothing started). Call after target.preflight and before anything is created."""
    kernel_plan = target.plan(scenario)
    planned = plan_points(scenario, kernel_plan)
    done = finished_points(run.dir) if run is not None else {}
    todo = [p for p in planned if p.point_id not in done]
    return plan_mod.build_plan(scenario, target.name, kernel_plan, todo, budget_text, budget_flag=budget_flag)


def _record_plan(
    run: Run,
    plan: plan_mod.Plan,
    points_status: dict[str, dict],
    wall_s: float | None,
    earlier: dict | None = None,
) -> None:
    """metadata["plan"]: the budget, what was projected and what was measured, per point and phase."""
    meta = plan.to_meta(run.dir)
    tot_p = {ph: 0.0 for ph in cm.PHASES}
    tot_a = {ph: 0.0 for ph in cm.PHASES}
    measured_s = 0.0
    for pid, row in meta["points"].items():
        st = points_status.get(pid)
        if st is None or st.get("seconds") is None:  # (a worker that died writes no time)
            continue
        row["actual"] = {k: round(v, 2) for k, v in cm.actual_phases(st).items()}
        row["actual_s"] = st.get("seconds")
        if st.get("adaptive"):  # samples spent per metric and the CI reached (harness.measure.adaptive)
            row["adaptive"] = st["adaptive"]
        measured_s += float(st.get("seconds") or 0)
        for ph in cm.PHASES:
            tot_p[ph] += row["projected"].get(ph, 0.0) if ph != "setup" else 0.0
            tot_a[ph] += row["actual"].get(ph, 0.0)
    # setup: what the run spent outside its points (guest boot, lab up, merge), against the setups projected
    tot_p["setup"] = sum(pp.projected["setup"] for pp in plan.included)
    if wall_s is not None:
        tot_a["setup"] = max(0.0, wall_s - measured_s)
    meta["phases"] = [
        {"phase": ph, "projected_s": round(tot_p[ph], 1), "actual_s": round(tot_a[ph], 1)} for ph in cm.PHASES
    ]
    meta["actual_total_s"] = round(wall_s, 1) if wall_s is not None else None
    meta["budget_text"] = plan_mod.fmt_duration(plan.budget_s)
    if earlier:  # the invocations before a --resume: their totals, and their points' rows
        meta["earlier"] = [
            *earlier.get("earlier", []),
            {k: earlier.get(k) for k in ("budget_s", "projected_total_s", "actual_total_s", "phases")},
        ]
        meta["points"] = {
            **{k: v for k, v in earlier.get("points", {}).items() if "actual" in v},
            **meta["points"],
        }
    run.meta["plan"] = meta


def _use_what_remains(
    run: Run, plan: plan_mod.Plan, planned: list[Point], elapsed: float, on_event: EventSink | None
) -> list[Point]:
    """After the planned points, the points left out that now fit what remains of the budget (the
    run went faster than projected), by the projection refined with what was measured."""
    if plan.budget_s is None or not run.over_budget:
        return []
    done = finished_points(run.dir)
    left = plan.budget_s - elapsed
    candidates = [p for p in planned if p.point_id in run.over_budget and p.point_id not in done]
    fit = plan.refit(candidates, left) if candidates and left > 0 else []
    if fit:
        run.over_budget -= {p.point_id for p in fit}
        msg = (
            f"{plan_mod.fmt_duration(left)} of the budget left: measuring {len(fit)} more point(s): "
            + ", ".join(p.point_id for p in fit)
        )
        log.info("%s", msg)
        run.refresh_points(planned)
        if on_event:
            on_event({"event": "log", "message": msg})
            on_event({"event": "eta", "remaining_s": plan.remaining(done)})
    return fit


def execute(
    run: Run,
    target,
    on_event: EventSink | None = None,
    plan: plan_mod.Plan | None = None,
    clock: Callable[[], float] = time.monotonic,
    merge: Callable[[Path], Any] | None = None,
) -> str:
    """Measure every pending point of `run` on `target` that fits the plan's budget; returns the
    final run status ("complete", "incomplete", or "over_budget": every point not measured was
    left out for the budget).

    merge(run_dir), when given, merges the point files into the run's samples table before the
    run is closed (harness.results.merge_points; passed in: results sit above the runner)."""
    scenario = run.scenario
    t0 = clock()
    if plan is None:
        plan = prepare_plan(scenario, target, None, run)
    kernel_plan = plan.kernel_plan
    planned = plan_points(scenario, kernel_plan)
    run.meta["kernel_plan"] = kernel_plan
    env = target.environment(kernel_plan)
    run.meta["kernels"] = env.get("kernels", run.meta.get("kernels", []))
    run.meta["tools"] = env.get("tools", {})
    run.over_budget = {pp.point.point_id for pp in plan.over_budget}
    done = run.refresh_points(planned)
    discard_partial(run.dir, done)
    fitting = {pp.point.point_id for pp in plan.included}
    todo = [p for p in planned if p.point_id not in done and p.point_id in fitting]
    log.info(
        "run %s: %d points planned, %d to do, %d over budget",
        run.dir.name,
        len(planned),
        len(todo),
        len(run.over_budget),
    )
    earlier = run.meta.get("plan")  # from the invocation this one resumes
    _record_plan(run, plan, {}, None, earlier)
    run.save()
    if on_event:
        on_event({"event": "plan_table", "text": plan.render(run.dir)})
        on_event({"event": "eta", "remaining_s": plan.remaining(done)})
    status = "incomplete"
    stopped_for_budget = False

    def sink(ev: dict) -> None:
        if ev.get("event") == "plan" and run.over_budget:  # targets count every planned point
            n_over = len(run.over_budget)
            ev = {**ev, "total": ev["total"] - n_over, "done": max(0, ev.get("done", 0) - n_over)}
        if ev.get("event") in ("point_done", "kernel"):
            if ev.get("event") == "kernel":
                kernels = {k["name"]: k for k in run.meta.get("kernels", [])}
                kernels[ev["name"]] = {k: v for k, v in ev.items() if k != "event"}
                run.meta["kernels"] = list(kernels.values())
            run.refresh_points(planned)
        if ev.get("event") == "validation":
            run.meta.setdefault("validation", {})[ev["key"]] = ev["result"]
            run.save()
        log.info("%s", json.dumps(ev, default=str))
        if on_event:
            on_event(ev)
        if ev.get("event") == "point_done":
            finished = finished_points(run.dir)
            if ev["point_id"] in finished:
                plan.observe(ev["point_id"], finished[ev["point_id"]])
            elapsed = clock() - t0
            left = [p for p in todo if p.point_id not in finished]
            if on_event:
                on_event({"event": "eta", "remaining_s": plan.remaining(finished)})
            if plan.budget_s is not None and left and elapsed >= plan.budget_s:
                raise BudgetExceeded(
                    f"budget {plan_mod.fmt_duration(plan.budget_s)} spent after "
                    f"{plan_mod.fmt_duration(elapsed)}: {len(left)} point(s) left unmeasured"
                )

    try:
        while todo:
            target.run_points(run, todo, sink)
            todo = _use_what_remains(run, plan, planned, clock() - t0, on_event)
    except BudgetExceeded as e:
        stopped_for_budget = True
        log.warning("%s", e)
        run.meta["budget_stop"] = str(e)
    except KeyboardInterrupt:
        status = "incomplete"
        log.warning("interrupted: %d of %d points finished", len(finished_points(run.dir)), len(planned))
        raise
    finally:
        done = finished_points(run.dir)
        if stopped_for_budget:
            run.over_budget |= {p.point_id for p in planned if p.point_id not in done}
            discard_partial(run.dir, done)  # the point the worker had begun is measured again whole
        if len(done) == len(planned):
            status = "complete"
        elif run.over_budget and all(p.point_id in done or p.point_id in run.over_budget for p in planned):
            status = "over_budget"
        run.refresh_points(planned)
        try:
            if merge is not None:
                merge(run.dir)
        except Exception as e:  # noqa: BLE001 - logged; the point files stay and `kpbench report` redoes the merge
            log.error("merging samples failed: %s", e)
        wall = clock() - t0
        _record_plan(run, plan, done, wall, earlier)
        order = [p.point_id for p in planned]
        run.meta["plan"]["over_budget"] = [
            {
                "point_id": pp.point.point_id,
                "projected_s": round(pp.total, 1),
                "command": plan.measure_command(pp, run.dir),
            }
            for pp in sorted(plan.points, key=lambda pp: order.index(pp.point.point_id))
            if pp.point.point_id in run.over_budget and pp.point.point_id not in done
        ]
        run.meta["wall_s"] = round(run.meta.get("wall_s", 0) + wall, 1)
        run.close("complete" if status == "complete" else "incomplete")
    return status


def default_out() -> Path:
    return Path(os.environ.get("KPBENCH_RESULTS", RESULTS_DIR))
