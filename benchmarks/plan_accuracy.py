"""How close the plan's projection came to what a run took.

    .venv/bin/python benchmarks/plan_accuracy.py RUN_DIR [RUN_DIR ...]

For each run folder: the initial projection (the cost model's coefficients alone) against the
actual wall time, per phase and in total, and the projected total the progress line would have
shown after each point (elapsed + the remaining points refined by those measured so far). Reads
metadata.json only; nothing is measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import plan as pl, runner
from harness.scenario import load_scenario


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
    # the refined projection after each point, replayed from the recorded point statuses
    sc = load_scenario(data=meta["scenario"], source=str(run_dir / "scenario.yaml"))
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
