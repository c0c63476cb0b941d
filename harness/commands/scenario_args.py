"""The scenario arguments `run` and `validate` share, and the scenario they select."""

from __future__ import annotations

import argparse

from harness.errors import UserError
from harness.modes import MODES


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """The scenario name and its overrides (--services, --modes, --set ...), and the cluster flags."""
    p.add_argument(
        "scenario", nargs="?", help="scenario name under scenarios/ or a YAML path (default: default)"
    )
    p.add_argument("--services", help="largest Service count of the sweep, or a comma-separated list")
    p.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--reps", type=int, help="repetitions")
    p.add_argument("--target", choices=["lab", "local", "cluster"])
    p.add_argument("--kernel", choices=["auto", "host", "uml"])
    p.add_argument("--iptables-backend", choices=["legacy", "nft"])
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any scenario field, e.g. --set measure.load.rate=500",
    )
    p.add_argument("--kubeconfig", help="cluster target: kubeconfig file")
    p.add_argument("--context", help="cluster target: kubeconfig context")
    p.add_argument("--yes", action="store_true", help="cluster target: allow changing kube-proxy")


def parse_services(text: str) -> list[tuple[list[str], object]]:
    """'50000' -> sweep up to 50,000; '1000,5000' -> exactly those counts."""
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(
            f"--services {text!r}: expected a number (the sweep's maximum) "
            "or a comma-separated list of counts"
        ) from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"--services {text!r}: counts must be whole numbers >= 1")
    if len(values) == 1:
        return [(["services"], {"max": values[0], "min": min(1000, values[0])})]
    return [(["services"], {"counts": values})]


def scenario_from_args(args: argparse.Namespace):
    """The scenario named by `args`, with the command line's overrides applied and validated."""
    from harness.scenario import load_scenario, parse_override

    overrides = []
    if args.services:
        overrides += parse_services(args.services)
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
