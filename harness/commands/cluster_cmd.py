"""`kpbench cluster up | down | status`: the offline multi-node test cluster (harness.testcluster).

up: control plane in its own network namespace, per node a namespace with containerd and kubelet,
kube-proxy deployed the kubeadm way; prints the kubeconfig for `kpbench run --target cluster`.
down: removes everything the cluster started or left (also after a crash); idempotent.
"""

from __future__ import annotations

import argparse
import signal
import sys

from harness.commands.privileges import require_root

NAME = "cluster"
HELP = "Bring the offline multi-node test cluster up or down (kpbench cluster up|down|status)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{up,down,status}")
    u = sub.add_parser("up", help="start a test cluster (control plane + N nodes + kube-proxy)")
    u.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    u.add_argument("--kube-version", help="Kubernetes release (default: the one kube/go.mod pins)")
    u.add_argument("--dir", help="state directory (default ~/.cache/kpbench/testcluster)")
    d = sub.add_parser("down", help="remove the test cluster and everything it left behind")
    d.add_argument("--dir", help="state directory (default ~/.cache/kpbench/testcluster)")
    s = sub.add_parser("status", help="what the test cluster's state file says is running")
    s.add_argument("--dir", help="state directory (default ~/.cache/kpbench/testcluster)")


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run(args) -> int:
    from pathlib import Path

    from harness.testcluster import lifecycle

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    directory = Path(args.dir).expanduser() if args.dir else None
    if args.action == "status":
        for line in lifecycle.status(directory):
            print(line)
        return 0
    require_root(f"kpbench cluster {args.action}")
    if args.action == "down":
        done = lifecycle.down(directory, log=say)
        print("test cluster removed" if done else "no test cluster: nothing to remove")
        return 0
    signal.signal(signal.SIGTERM, _terminate)  # a killed `up` removes what it started, as Ctrl-C does
    c = lifecycle.up(args.nodes, args.kube_version, directory=directory, log=say)
    t = c.timings
    say(
        f"test cluster up: {len(c.nodes)} node(s), Kubernetes {c.kube_version}, {c.server}; "
        f"bring-up {t.get('total_s', 0):.1f} s (+ images {t.get('images_s', 0):.1f} s)"
    )
    print(c.kubeconfig)
    say(
        f"use it: kpbench run --target cluster --kubeconfig {c.kubeconfig} --yes ...; remove it: kpbench cluster down"
    )
    return 0
