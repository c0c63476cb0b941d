"""How close the plan's projection came to what a run took.

    .venv/bin/python benchmarks/plan_accuracy.py RUN_DIR [RUN_DIR ...]

For each run folder: the initial projection (the cost model's coefficients alone) against the
actual wall time, per phase and in total; the same projection by the cost model as it is now
(harness/costmodel.py, e.g. after a refit) for the points the run measured; the projected total
the progress line would have shown after each point (elapsed + the remaining points refined by
those measured so far); and per adaptive metric the samples spent against the CI reached. Reads
metadata.json only; nothing is measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import costmodel as cm, plan as pl, runner
from harness.scenario import load_scenario


def recorded_scenario(meta: dict, run_dir: Path):
    """The run's resolved scenario; a run from before adaptive load phases (no measure.load.adaptive
    recorded) ran its load phases for their whole duration, and is replayed so; one from before the
    paced sync poller (no measure.sync.poll_max_cpu_share) polled every 1 ms whatever it cost."""
    data = json.loads(json.dumps(meta["scenario"]))
    load = data.setdefault("measure", {}).setdefault("load", {})
    load.setdefault("adaptive", False)
    data["measure"].setdefault("sync", {}).setdefault("poll_max_cpu_share", None)
    return load_scenario(data=data, source=str(run_dir / "scenario.yaml"))


def model_projection(meta: dict, run_dir: Path) -> tuple[float, dict[str, float], dict[str, float]]:
    """The current cost model's projection of the points the run measured, against their actual
    time: (projected total, projected per phase, actual per phase); setup's actual is the time
    outside the points."""
    sc = recorded_scenario(meta, run_dir)
    kp = meta["kernel_plan"]
    status = {p["point_id"]: p for p in meta["points"] if p.get("seconds") is not None}
    pts = [p for p in runner.plan_points(sc, kp) if p.point_id in status]
    plan = pl.build_plan(sc, meta["target"], kp, pts, None)
    proj = {ph: 0.0 for ph in cm.PHASES}
    act = {ph: 0.0 for ph in cm.PHASES}
    for pp in plan.points:
        for ph, v in pp.projected.items():
            proj[ph] += v
        for ph, v in cm.actual_phases(status[pp.point.point_id]).items():
            act[ph] += v
    wall = meta["plan"].get("actual_total_s") or meta.get("wall_s") or 0.0
    act["setup"] = max(0.0, wall - sum(float(st["seconds"]) for st in status.values()))
    return sum(proj.values()), proj, act


def samples_spent(meta: dict) -> dict[str, dict[str, float]]:
    """Per adaptive metric kind (e.g. 'request_us keepalive=false'): points, samples spent, the
    caps, points whose CI met +-5%, and the widest CI reached."""
    out: dict[str, dict[str, float]] = {}
    for p in meta["points"]:
        for key, a in (p.get("adaptive") or {}).items():
            kind = (
                key
                if "change=" in key or "keepalive=" in key
                else key.split(" ")[0] + " " + key.split(" ")[-1]
            )
            row = out.setdefault(kind, {"points": 0, "samples": 0, "cap": 0, "met": 0, "worst_ci": 0.0})
            row["points"] += 1
            row["samples"] += a.get("samples", 0)
            row["cap"] += a.get("cap", 0)
            row["met"] += bool(a.get("ci_met"))
            if a.get("ci_rel") is not None:
                row["worst_ci"] = max(row["worst_ci"], a["ci_rel"])
    return out


def accuracy(run_dir: Path) -> None:
    meta = json.loads((run_dir / "metadata.json").read_text())
    plan_meta = meta.get("plan")
    if not plan_meta:
        print(f"{run_dir}: no plan recorded (a run from before the plan existed)")
        return
    proj, act = plan_meta["projected_total_s"], plan_meta["actual_total_s"]
    print(
        f"{run_dir.name}: target {meta['target']}, {len(meta['points'])} points, "
        f"projected {proj:.0f} s, actual {act:.0f} s ({(proj - act) / act:+.0%})"
    )
    print(f"  {'phase':<10} {'projected s':>12} {'actual s':>9}")
    for row in plan_meta["phases"]:
        print(f"  {row['phase']:<10} {row['projected_s']:>12.1f} {row['actual_s']:>9.1f}")
    total, proj_ph, act_ph = model_projection(meta, run_dir)
    print(
        f"  the cost model now, for the points measured: projected {total:.0f} s "
        f"({(total - act) / act:+.0%} of actual)"
    )
    print(f"  {'phase':<10} {'projected s':>12} {'actual s':>9}")
    for ph in cm.PHASES:
        print(f"  {ph:<10} {proj_ph[ph]:>12.1f} {act_ph[ph]:>9.1f}")
    spent = samples_spent(meta)
    if spent:
        print(
            f"  {'adaptive metric':<38} {'points':>6} {'samples':>8} {'of cap':>7} {'CI met':>6} {'widest CI':>9}"
        )
        for kind, r in sorted(spent.items()):
            print(
                f"  {kind:<38} {r['points']:>6} {r['samples']:>8} {r['cap']:>7} "
                f"{r['met']:>6} {r['worst_ci']:>+9.1%}"
            )
    # the refined projection after each point, replayed from the recorded point statuses
    sc = recorded_scenario(meta, run_dir)
    kp = meta["kernel_plan"]
    plan = pl.build_plan(sc, meta["target"], kp, runner.plan_points(sc, kp), None)
    recorded = plan_meta.get("points", {})
    for pp in plan.points:  # the points this run planned to measure (its budget's choice)
        pp.fits = recorded.get(pp.point.point_id, {}).get("fits", True)
    status = {p["point_id"]: p for p in meta["points"]}
    elapsed = act - sum(float(p.get("seconds") or 0) for p in meta["points"])  # time outside points
    done: list[str] = []
    print("  projected total after each point (refined):")
    for pp in plan.points:
        pid = pp.point.point_id
        st = status.get(pid)
        if st is None or st.get("seconds") is None:
            continue
        plan.observe(pid, st)
        done.append(pid)
        elapsed += float(st["seconds"])
        total = elapsed + plan.remaining(done)
        print(f"    {pid:<28} {total:>7.0f} s ({(total - act) / act:+.0%})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    for run_dir in ap.parse_args(argv).runs:
        accuracy(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
