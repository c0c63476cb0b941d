"""`kpbench run`: run a scenario (or resume an interrupted run), write its results folder and report."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from harness.commands.privileges import require_root
from harness.commands.scenario_args import add_scenario_arguments, scenario_from_args
from harness.errors import UserError

NAME = "run"
HELP = "run a scenario and write a results folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of `kpbench run`: the scenario arguments, then the run's own."""
    add_scenario_arguments(p)
    p.add_argument("--out", help="parent folder of the run folder (default: results/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an incomplete run")
    p.add_argument("--no-report", action="store_true", help="do not build the HTML report at the end")
    p.add_argument(
        "--budget",
        metavar="DURATION",
        help="time budget: 30m, 1h30m, 900s or none (default: the scenario's; none with --resume)",
    )
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="print the plan (points, kernels, rulesets, projected costs, what fits) and exit 0",
    )


def _terminate(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run (or resume) and report; 0 when every point finished (or was left out for the budget), 1 when
    some failed, 130 on Ctrl-C."""
    from harness import results, runner
    from harness.progress import ProgressView
    from harness.targets import make_target

    if args.resume:
        if args.scenario or args.services or args.modes or args.reps or args.set:
            raise UserError("--resume continues a run as it was planned: give no scenario or overrides")
        run = runner.Run.resume(Path(args.resume))
    else:
        scenario = scenario_from_args(args)
        run = None
    scenario = run.scenario if run else scenario
    plan_only = getattr(args, "plan_only", False)
    if scenario.target in ("lab", "local") and not plan_only:
        require_root(f"kpbench run --target {scenario.target}")
    if (
        scenario.target in ("lab", "local") and not plan_only
    ):  # both make namespaces, guests and processes here
        from harness.lab.cleanup import cleanup_leftovers

        cleanup_leftovers(lambda msg: print(f"cleaning up after an earlier run: {msg}", file=sys.stderr))
    target = make_target(scenario, args)
    target.preflight(scenario)
    from_scenario = args.budget is None and run is None  # a resumed run measures all that is missing
    plan = runner.prepare_plan(
        scenario,
        target,
        scenario.budget if from_scenario else args.budget,
        run,
        budget_flag="scenario budget" if from_scenario else "--budget",
    )
    if plan_only:  # nothing created, nothing measured
        print(plan.render(run.dir if run else None))
        return 0
    if run is None:
        run = runner.Run.create(scenario, Path(args.out) if args.out else runner.default_out())
    view = ProgressView(run.dir)
    signal.signal(signal.SIGTERM, _terminate)  # `kill` is handled like Ctrl-C: stop, clean up, keep
    # Ctrl-C (SIGINT) too, even when started as a background job that inherited SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with view:
            status = runner.execute(run, target, view.on_event, plan=plan, merge=results.merge_points)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: every finished point is kept in {run.dir}\n"
            f"continue with: kpbench run --resume {run.dir}",
            file=sys.stderr,
        )
        return 130
    failed = [p["point_id"] for p in run.meta.get("points", []) if p.get("status") == "failed"]
    print(
        f"run {status}: {run.dir}"
        + (
            f" ({len(failed)} of {len(run.meta['points'])} points failed: "
            f"{', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''})"
            if failed
            else ""
        )
    )
    over = run.meta.get("plan", {}).get("over_budget") or []
    if over:
        print(
            f"kpbench: warning: budget {run.meta['plan'].get('budget_text')}: {len(over)} point(s) not measured "
            f"(over_budget in metadata.json); measure them with: kpbench run --resume {run.dir} --budget none",
            file=sys.stderr,
        )
    if not args.no_report:
        from harness import report

        try:
            path = report.build_report([run.dir], run.dir / "report")
            print(f"report: {path}")
        except Exception as e:  # noqa: BLE001 - the measurements are safe on disk; say so, exit status 1
            print(
                f"kpbench: the report could not be built ({e}); the results are in {run.dir}", file=sys.stderr
            )
            return 1
    return (
        0 if status in ("complete", "over_budget") and not failed else 1
    )  # failed points are kept, and said
