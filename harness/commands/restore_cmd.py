"""Put kube-proxy back as a crashed cluster run found it (from RUN_DIR/cluster-restore.json).

Reads the saved original ConfigMap and mode, compares with the cluster as it is now, and when
anything differs: (between iptables and ipvs) runs kube-proxy --cleanup on every node, writes the
original config.conf back, restarts kube-proxy and waits for every node to run the original
mode; then deletes everything labelled with the run. Safe to run more than once.
"""

from __future__ import annotations

import argparse
import sys

NAME = "restore"
HELP = "Put kube-proxy back as a crashed cluster run found it (from RUN_DIR/cluster-restore.json)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder holding cluster-restore.json")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: the one the run used)")
    p.add_argument("--context", help="kubeconfig context (default: the one the run used)")
    p.add_argument(
        "--keep-objects",
        action="store_true",
        help="restore kube-proxy only; leave the run's namespace and objects",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="restore again even when the file says the restore already finished",
    )


def run(args, *, waits=None, out=None) -> int:
    from harness.cluster import ClusterError
    from harness.cluster.kube import Rest, connect
    from harness.cluster.restore import load, restore_cluster, restore_path
    from harness.cluster.switch import KubeProxyController, Waits

    say = out or (lambda s: print(s, file=sys.stderr))
    path = restore_path(args.run_dir)
    state = load(path)
    if state.status == "restored" and not args.force:
        print(
            f"{path}: already restored (kube-proxy back to {state.original_mode}); nothing to do "
            "(--force restores again)"
        )
        return 0
    conn = connect(args.kubeconfig or state.kubeconfig, args.context or state.context)
    if conn.server != state.server:
        raise ClusterError(
            f"{conn.where()} is not the cluster the run changed ({state.server}): pass the "
            "--kubeconfig/--context of that cluster"
        )
    rest = Rest(conn.api)
    ctl = KubeProxyController(rest, state, path, waits=waits(rest) if waits else Waits(rest, say), log=say)
    try:
        restore_cluster(ctl, state, path, log=say, delete_objects=not args.keep_objects)
    except ClusterError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure -> one line saying to run restore again
        raise ClusterError(
            f"restore did not finish ({type(e).__name__}: {str(e).splitlines()[0][:300]}): "
            f"fix the cause and run `kpbench restore {args.run_dir}` again"
        ) from None
    print(
        f"restored: kube-proxy runs {state.original_mode} with the original config.conf"
        + ("" if args.keep_objects else "; the run's objects are deleted")
    )
    return 0
