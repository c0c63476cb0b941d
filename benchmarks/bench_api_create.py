"""API object creation throughput of the local target's control plane.

    sudo .venv/bin/python benchmarks/bench_api_create.py [--services 50000] [--upstream-allocator]
        [--chunk 5000] [--pprof DIR] [--json FILE]

Starts etcd + kube-apiserver exactly as `kpbench run --target local` does (the scenario's default
`local.apiserver_args`, or none with --upstream-allocator), then creates N Services + N
selector-less EndpointSlices in chunks through harness.targets.localcluster.create_services (the
official kubernetes client, the scenario's create_qps / create_concurrency). Prints, per chunk and
overall, objects per second and the CPU seconds spent by this process (the client), kube-apiserver
and etcd, so the cost per object is split between client and server. The issue's target is 500
objects/s for 50,000 + 50,000.

`--pprof DIR` also serves kube-apiserver's /debug/pprof (--profiling=true) and saves a 30 s CPU
profile taken at the start of each chunk (unless the last one is still running) to
DIR/cpu-<Services before>.pb.gz (`go tool pprof -top BINARY FILE` reads it): where the
apiserver's time goes as the Service count grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import ssl
import threading
import time
from pathlib import Path

from harness.model import ModelSpec, build_model
from harness.scenario import LocalSpec, default_apiserver_args
from harness.targets import localcluster as lc
from harness.targets.local_procs import http_get

PPROF_SECONDS = 30


def _profile(cluster: lc.LocalCluster, dest: Path) -> threading.Thread:
    """Save a CPU profile of the cluster's kube-apiserver to `dest`, from a thread (started)."""

    def run() -> None:
        tls = ssl.create_default_context(cafile=str(cluster.pki["ca_crt"]))
        status, body = http_get(
            cluster.netns,
            cluster.api_addr,
            lc.API_PORT,
            f"/debug/pprof/profile?seconds={PPROF_SECONDS}",
            tls=tls,
            token=cluster.tokens["admin"],
            timeout=PPROF_SECONDS + 60,
        )
        if status == 200:
            dest.write_bytes(body)
        else:
            print(f"pprof {dest.name}: HTTP {status}", flush=True)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=50000)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument(
        "--upstream-allocator",
        action="store_true",
        help="no apiserver_args: 1.34's default IPAddress allocator",
    )
    ap.add_argument(
        "--apiserver-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more kube-apiserver argument (repeatable), to try a tuning",
    )
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--pprof", metavar="DIR", help="save a kube-apiserver CPU profile per chunk here")
    args = ap.parse_args()
    spec = LocalSpec()
    model = build_model(ModelSpec(n_services=args.services, endpoints=1))
    apiserver_args = (
        [] if args.upstream_allocator else default_apiserver_args(lc.kube_version())
    ) + args.apiserver_arg
    if args.pprof:
        Path(args.pprof).mkdir(parents=True, exist_ok=True)
        apiserver_args.append("--profiling=true")  # after LocalCluster's --profiling=false: wins
    rows = []
    with lc.LocalCluster(apiserver_args=apiserver_args) as cluster:
        procs = {"kube-apiserver": cluster.apiserver.popen.pid, "etcd": cluster.etcd.popen.pid}
        # `ip netns exec` execs the binary, so these pids are the components themselves
        prof: threading.Thread | None = None
        t_all, cpu_all = time.monotonic(), {k: _cpu_of(p) for k, p in procs.items()} | {"client": _self_cpu()}
        for start in range(0, args.services, args.chunk):
            chunk = model.services[start : start + args.chunk]
            cpu0 = {k: _cpu_of(p) for k, p in procs.items()} | {"client": _self_cpu()}
            if args.pprof and not (prof and prof.is_alive()):  # one profile at a time
                prof = _profile(cluster, Path(args.pprof) / f"cpu-{start}.pb.gz")
            stats = lc.create_services(
                cluster,
                chunk,
                qps=spec.create_qps,
                concurrency=spec.create_concurrency,
                node_names={"a": "node-a", "b": "node-b"},
            )
            cpu1 = {k: _cpu_of(p) for k, p in procs.items()} | {"client": _self_cpu()}
            objs = stats.objects
            row = {
                "services_before": start,
                "objects": objs,
                "seconds": round(stats.seconds, 2),
                "objects_per_s": round(stats.objects_per_s, 1),
                **{
                    f"{k}_cpu_ms_per_object": round(1000 * (cpu1[k] - cpu0[k]) / max(objs, 1), 2)
                    for k in cpu0
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        wall = time.monotonic() - t_all
        if prof is not None:
            prof.join()
        cpu_end = {k: _cpu_of(p) for k, p in procs.items()} | {"client": _self_cpu()}
    total = sum(r["objects"] for r in rows)
    summary = {
        "services": args.services,
        "objects": total,
        "seconds": round(wall, 1),
        "objects_per_s": round(total / wall, 1),
        "apiserver_args": apiserver_args,
        **{f"{k}_cpu_s": round(cpu_end[k] - cpu_all[k], 1) for k in cpu_all},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"chunks": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
