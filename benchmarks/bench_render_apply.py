"""Render and apply cost per proxy mode: render alone, the bare kernel tool, full_sync through the harness.

For N Services x 1 endpoint (default 50,000) and every mode this kernel supports:
  render_s   rendering the payload in Python (no tool);
  bare_s     the kernel tool applying the rendered payload from a file, in a fresh namespace
             (iptables-{legacy,nft}-restore --noflush, nft -f, ipvsadm-restore for IPVS);
  sync_s     Dataplane.full_sync in a fresh namespace (streams while rendering);
and the bars: render/bare <= 0.25 and sync/bare <= 1.1. For IPVS (only where /proc/net/ip_vs
exists, e.g. the UML guest) `bare` is ipvsadm-restore of the virtual + real servers, and
`netlink_s` is the harness's batched netlink programming of the same objects alone; sync_s also
binds the addresses to kube-ipvs0 and programs ipsets, iptables and sysctls.

    sudo .venv/bin/python benchmarks/bench_render_apply.py [--services 50000] [--modes iptables-legacy,nftables]

Every namespace is a fresh `kpb-bench-...` one, deleted at the end. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.dataplane import make_dataplane  # noqa: E402
from harness.dataplane.base import Change, DataplaneSettings  # noqa: E402
from harness.lab import netns  # noqa: E402
from harness.model import Endpoint, ModelSpec, build_model  # noqa: E402
from harness.releases import DEFAULT_KUBE_VERSION  # noqa: E402

ALL_MODES = ("iptables-legacy", "iptables-nft", "nftables", "ipvs")


def available_modes() -> list[str]:
    modes = ["iptables-legacy"]
    if subprocess.run(["iptables-nft-save", "-t", "nat"], capture_output=True).returncode == 0:
        modes.append("iptables-nft")
    if subprocess.run(["nft", "list", "tables"], capture_output=True).returncode == 0:
        modes.append("nftables")
    if os.path.exists("/proc/net/ip_vs"):
        modes.append("ipvs")
    return modes


def fresh_ns(tag: str) -> str:
    name = netns.ns_name(f"bench{os.getpid()}", tag)
    netns.delete(name)
    netns.create(name)
    return name


def pod_routes(ns: str, pod_cidr: str) -> None:
    """IPVS refuses unroutable real servers: a veth pair with a route to the pod CIDR."""
    r = lambda *a: netns.run(ns, list(a))  # noqa: E731
    r("ip", "link", "add", "kpb0", "type", "veth", "peer", "name", "kpb1")
    r("ip", "link", "set", "kpb0", "up")
    r("ip", "link", "set", "kpb1", "up")
    r("ip", "addr", "add", "10.255.0.1/24", "dev", "kpb0")
    r("ip", "route", "add", pod_cidr, "via", "10.255.0.2")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_mode(mode: str, services, spec: ModelSpec, kube_version: str = DEFAULT_KUBE_VERSION) -> dict:
    backend = "nft" if mode == "iptables-nft" else "legacy"
    settings = DataplaneSettings(
        iptables_backend=backend,
        cluster_cidr=spec.pod_cidr,
        service_cidr=spec.service_cidr,
        kube_version=kube_version,
    )
    kind = "iptables" if mode.startswith("iptables") else mode
    dp = make_dataplane(kind, None, settings)
    cpu = time.process_time()
    render_s = timed(lambda: dp.render(services))
    render_cpu_s = time.process_time() - cpu
    text = dp.render(services)
    row = {
        "mode": mode,
        "services": len(services),
        "render_s": render_s,
        "render_cpu_s": render_cpu_s,
        "payload_mb": len(text) / 1e6,
        "loadavg_before": os.getloadavg()[0],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        if kind == "ipvs":
            f.write(text.split("# ipset restore\n")[0])
        else:
            f.write(text)
        path = f.name
    del text
    try:
        tool = {
            "iptables": [f"iptables-{backend}-restore", "--noflush", "-w", "5"],
            "nftables": ["nft", "-f", path],
            "ipvs": ["ipvsadm-restore"],
        }[kind]
        ns = fresh_ns("bare")
        try:
            if kind == "ipvs":
                pod_routes(ns, spec.pod_cidr)
            stdin = None if kind == "nftables" else open(path)
            row["bare_s"] = timed(
                lambda: subprocess.run(netns.exec_prefix(ns) + tool, stdin=stdin, check=True)
            )
            if stdin:
                stdin.close()
        finally:
            netns.delete(ns)
        ns = fresh_ns("sync")
        try:
            if kind == "ipvs":
                pod_routes(ns, spec.pod_cidr)
            d = make_dataplane(kind, ns, settings)
            row["sync_s"] = timed(lambda: d.full_sync(services))
            row["counts"] = d.counts()
            # one partial sync: the middle Service gets a second endpoint (first apply fills caches)
            mid = services[len(services) // 2]
            pod = spec.pod_cidr.rsplit(".", 2)[0] + ".1.11"
            upd = mid.with_endpoints(mid.endpoints + (Endpoint(pod, mid.endpoints[0].port, "b"),))
            after = [upd if s is mid else s for s in services]
            row["apply_update_s"] = timed(lambda: d.apply(after, Change("update", upd)))
            row["apply_update_again_s"] = timed(lambda: d.apply(services, Change("update", mid)))
            if kind == "ipvs":
                d.close()
        finally:
            netns.delete(ns)
        if kind == "ipvs":
            # the netlink part alone (virtual + real servers, what ipvsadm-restore does), in a fresh
            # namespace: re-adding after a flush would hit the kernel's linear dest-trash lookup
            ns = fresh_ns("netlink")
            try:
                pod_routes(ns, spec.pod_cidr)
                d = make_dataplane(kind, ns, settings)
                ipvs, _rt = d._socks()
                row["netlink_s"] = timed(lambda: ipvs.run(d._all_ipvs_msgs(services), "bench"))
                d.close()
            finally:
                netns.delete(ns)
    finally:
        os.unlink(path)
    row["render_over_bare"] = row["render_s"] / row["bare_s"]
    row["sync_over_bare"] = row["sync_s"] / row["bare_s"]
    if "netlink_s" in row:
        row["netlink_over_bare"] = row["netlink_s"] / row["bare_s"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=50000)
    ap.add_argument(
        "--modes", default="", help=f"comma list of {', '.join(ALL_MODES)} (default: all available)"
    )
    ap.add_argument("--endpoints", type=int, default=1)
    ap.add_argument("--kube-version", default=DEFAULT_KUBE_VERSION, help="the kube-proxy release rendered")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2
    avail = available_modes()
    modes = [m for m in args.modes.split(",") if m] or avail
    for m in modes:
        if m not in avail:
            print(
                f"mode {m} is not available on this kernel (available: {', '.join(avail)})", file=sys.stderr
            )
            return 2
    spec = ModelSpec(n_services=args.services, endpoints=args.endpoints)
    services = build_model(spec).services
    rows = []
    print(
        f"kernel {os.uname().release}, {args.services} Services x {args.endpoints} endpoint(s), "
        f"kube-proxy {args.kube_version}"
    )
    hdr = (
        f"{'mode':16} {'render s':>9} {'bare s':>8} {'sync s':>8} {'render/bare':>11} {'sync/bare':>9} "
        f"{'netlink/bare':>12} {'apply s':>8}"
    )
    print(hdr)
    for m in modes:
        r = bench_mode(m, services, spec, args.kube_version)
        rows.append(r)
        nl = f"{r['netlink_over_bare']:12.2f}" if "netlink_over_bare" in r else f"{'-':>12}"
        print(
            f"{m:16} {r['render_s']:9.2f} {r['bare_s']:8.2f} {r['sync_s']:8.2f} "
            f"{r['render_over_bare']:11.2f} {r['sync_over_bare']:9.2f} {nl} {r['apply_update_again_s']:8.2f}",
            flush=True,
        )
    print(json.dumps({"kernel": os.uname().release, "kube_version": args.kube_version, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
