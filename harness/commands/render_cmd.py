"""`kpbench render`: print the rules a mode would program for a model, in the tool's input format."""

from __future__ import annotations

import argparse
import sys

from harness.errors import UserError
from harness.modes import MODES
from harness.releases import DEFAULT_KUBE_VERSION

NAME = "render"
HELP = "print what the lab would program, in each tool's input format"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", required=True, choices=list(MODES))
    p.add_argument("--services", type=int, required=True)
    p.add_argument("--endpoints", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--node-ports", type=int, default=0, help="the first K Services get a NodePort")
    p.add_argument("--affinity", type=int, default=0, help="the first K Services get ClientIP affinity")
    p.add_argument("--iptables-backend", choices=["legacy", "nft"], default="legacy")
    p.add_argument("--scheduler", default="rr")
    p.add_argument(
        "--kube-version",
        default=DEFAULT_KUBE_VERSION,
        help=f"the kube-proxy release whose rules are rendered (default {DEFAULT_KUBE_VERSION})",
    )


def run(args: argparse.Namespace) -> int:
    from harness.dataplane import render
    from harness.dataplane.base import DataplaneSettings
    from harness.model import ModelSpec, build_model

    model = build_model(
        ModelSpec(
            n_services=args.services,
            endpoints=args.endpoints,
            seed=args.seed,
            node_ports=args.node_ports,
            affinity=args.affinity,
        )
    )
    from harness.releases import UnknownRelease

    try:
        settings = DataplaneSettings(
            iptables_backend=args.iptables_backend,
            scheduler=args.scheduler,
            node_ips=("10.255.0.1",),
            kube_version=args.kube_version,
        )
        text = render(args.mode, model.services, settings)
    except UnknownRelease as e:
        raise UserError(f"--kube-version: {e}") from None
    sys.stdout.write(text)
    return 0
