"""`kpbench`: doctor, run, validate, render, report, compare, clean."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from harness import __version__


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from harness.lab.netns import LabError
    from harness.model import ModelError
    from harness.scenario import ScenarioError

    errs: list[type[BaseException]] = [UsageError, ScenarioError, LabError, ModelError]
    try:
        from harness.results import ResultsError
        errs.append(ResultsError)
    except ImportError:
        pass
    return tuple(errs)


def _parse_services(text: str) -> list[tuple[list[str], object]]:
    """'50000' -> sweep up to 50,000; '1000,5000' -> exactly those counts."""
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--services {text!r}: expected a number (the sweep's maximum) "
                         "or a comma-separated list of counts") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--services {text!r}: counts must be whole numbers >= 1")
    if len(values) == 1:
        return [(["services"], {"max": values[0], "min": min(1000, values[0])})]
    return [(["services"], {"counts": values})]


def scenario_from_args(args):
    from harness.scenario import load_scenario, parse_override

    overrides = []
    if args.services:
        overrides += _parse_services(args.services)
    if args.modes:
        overrides.append((["modes"], [m.strip() for m in args.modes.split(",") if m.strip()]))
    if args.reps is not None:
        overrides.append((["repetitions"], args.reps))
    if args.target:
        overrides.append((["target"], args.target))
    if args.kernel:
        overrides.append((["kernel"], args.kernel))
    if args.iptables_backend:
        overrides.append((["iptables_backend"], args.iptables_backend))
    for item in args.set or []:
        overrides.append(parse_override(item))
    return load_scenario(args.scenario, overrides)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} needs root (it creates network namespaces): run it with sudo")


def cmd_run(args) -> int:
    from harness import runner
    from harness.progress import ProgressView
    from harness.targets import make_target

    if args.resume:
        if args.scenario or args.services or args.modes or args.reps or args.set:
            raise UsageError("--resume continues a run as it was planned: give no scenario or overrides")
        run = runner.Run.resume(Path(args.resume))
    else:
        scenario = scenario_from_args(args)
        run = None
    scenario = run.scenario if run else scenario
    if scenario.target in ("lab", "local"):
        _require_root(f"kpbench run --target {scenario.target}")
    if scenario.target in ("lab", "local"):  # both make namespaces, guests and processes here
        from harness.lab.cleanup import cleanup_leftovers

        cleanup_leftovers(lambda msg: print(f"cleaning up after an earlier run: {msg}", file=sys.stderr))
    target = make_target(scenario, args)
    target.preflight(scenario)
    if run is None:
        run = runner.Run.create(scenario, Path(args.out) if args.out else runner.default_out())
    view = ProgressView(run.dir)
    signal.signal(signal.SIGTERM, _terminate)  # `kill` is handled like Ctrl-C: stop, clean up, keep
    try:
        with view:
            status = runner.execute(run, target, view.on_event)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished point is kept in {run.dir}\n"
              f"continue with: kpbench run --resume {run.dir}", file=sys.stderr)
        return 130
    failed = [p["point_id"] for p in run.meta.get("points", []) if p.get("status") == "failed"]
    print(f"run {status}: {run.dir}" + (f" ({len(failed)} of {len(run.meta['points'])} points failed: "
                                       f"{', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''})" if failed else ""))
    if not args.no_report:
        from harness import report

        try:
            path = report.build_report([run.dir], run.dir / "report")
            print(f"report: {path}")
        except Exception as e:  # the measurements are safe on disk; say so and keep the exit status honest
            print(f"kpbench: the report could not be built ({e}); the results are in {run.dir}", file=sys.stderr)
            return 1
    return 0 if status == "complete" and not failed else 1  # failed points are kept, and said


def cmd_validate(args) -> int:
    from harness.targets import make_target
    from harness.validate_cmd import run_validation

    scenario = scenario_from_args(args)
    _require_root("kpbench validate")
    target = make_target(scenario, args)
    target.preflight(scenario)
    return run_validation(scenario, target)


def cmd_render(args) -> int:
    from harness.dataplane import render
    from harness.dataplane.base import DataplaneSettings
    from harness.model import ModelSpec, build_model

    model = build_model(ModelSpec(n_services=args.services, endpoints=args.endpoints, seed=args.seed,
                                  node_ports=args.node_ports, affinity=args.affinity))
    from harness.dataplane.versions import UnknownRelease

    try:
        settings = DataplaneSettings(iptables_backend=args.iptables_backend, scheduler=args.scheduler,
                                     node_ips=("10.255.0.1",), kube_version=args.kube_version)
        text = render(args.mode, model.services, settings)
    except UnknownRelease as e:
        raise UsageError(f"--kube-version: {e}") from None
    sys.stdout.write(text)
    return 0


def cmd_doctor(args) -> int:
    from harness.doctor import doctor

    return doctor()


def cmd_clean(args) -> int:
    from harness.lab.cleanup import cleanup_leftovers

    _require_root("kpbench clean")
    removed = cleanup_leftovers(print)
    print(f"clean: removed {len(removed)} leftover item(s)" if removed else "clean: nothing left over")
    return 0


def _add_scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="scenario name under scenarios/ or a YAML path (default: default)")
    p.add_argument("--services", help="largest Service count of the sweep, or a comma-separated list")
    p.add_argument("--modes", help="comma-separated subset of iptables,ipvs,nftables")
    p.add_argument("--reps", type=int, help="repetitions")
    p.add_argument("--target", choices=["lab", "local", "cluster"])
    p.add_argument("--kernel", choices=["auto", "host", "uml"])
    p.add_argument("--iptables-backend", choices=["legacy", "nft"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any scenario field, e.g. --set measure.load.rate=500")
    p.add_argument("--kubeconfig", help="cluster target: kubeconfig file")
    p.add_argument("--context", help="cluster target: kubeconfig context")
    p.add_argument("--yes", action="store_true", help="cluster target: allow changing kube-proxy")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kpbench", description=__doc__)
    ap.add_argument("--version", action="version", version=f"kpbench {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a scenario and write a results folder")
    _add_scenario_args(p)
    p.add_argument("--out", help="parent folder of the run folder (default: results/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an incomplete run")
    p.add_argument("--no-report", action="store_true", help="do not build the HTML report at the end")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="run the functional traffic matrix for each mode")
    _add_scenario_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print what the lab would program, in each tool's input format")
    p.add_argument("--mode", required=True, choices=["iptables", "ipvs", "nftables"])
    p.add_argument("--services", type=int, required=True)
    p.add_argument("--endpoints", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--node-ports", type=int, default=0, help="the first K Services get a NodePort")
    p.add_argument("--affinity", type=int, default=0, help="the first K Services get ClientIP affinity")
    p.add_argument("--iptables-backend", choices=["legacy", "nft"], default="legacy")
    p.add_argument("--scheduler", default="rr")
    from harness.dataplane.versions import DEFAULT_KUBE_VERSION

    p.add_argument("--kube-version", default=DEFAULT_KUBE_VERSION,
                   help=f"the kube-proxy release whose rules are rendered (default {DEFAULT_KUBE_VERSION})")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("doctor", help="what each mode needs and whether this machine has it")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("clean", help="remove namespaces, guests and processes left by a crashed run")
    p.set_defaults(func=cmd_clean)

    for name, module in (("report", "harness.commands.report_cmd"), ("compare", "harness.commands.compare_cmd"),
                         ("restore", "harness.commands.restore_cmd")):
        try:
            mod = __import__(module, fromlist=["run"])
        except ImportError:
            continue
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    errors = _user_errors()
    try:
        return args.func(args)
    except errors as e:
        print(f"kpbench: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
