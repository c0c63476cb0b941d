"""What the sync poller costs: one-change iptables syncs timed with and without it, interleaved.

In a lab of N Services (iptables, legacy backend, node a programmed), for each round and each
poll setting (0 = no poller: the apply alone; "1@0.1" = 1 ms paced to at most 10% of a CPU, as
measure.sync.poll_max_cpu_share does), one add and one delete of the same extra Service:
  apply_s    the dataplane's apply call (iptables-restore --noflush), what the poller competes with;
  sync_s     with a poller: start of the first attempt that saw the new state, minus t0;
  attempts   connection attempts the poller started;
  res_s      the sample's resolution (harness.measure.sync.resolution_s), cpu the poller's CPU share.
Also, before the syncs: the per-attempt cost at N, a blocking connect to a served Service
(`connect_us`), and the share of the CPU a poller takes at each interval while nothing changes
(`/proc/stat` busy fraction over 1 s, polling a Service that is served, expecting it gone).
Orders are rotated between rounds so drift is not mistaken for an interval effect.

    sudo .venv/bin/python benchmarks/bench_sync_poll.py --services 10000 [--uml] [--rounds 3]
        [--intervals 0,1,5,20]

--uml boots the kpbench UML guest and runs the same measurement there. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.dataplane import make_dataplane  # noqa: E402
from harness.dataplane.base import Change, DataplaneSettings  # noqa: E402
from harness.model import ModelSpec, build_model  # noqa: E402


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def setting(spec: str) -> tuple[float, float | None]:
    """ "5" -> (5 ms, no pacing); "1@0.1" -> (1 ms, at most 10% of a CPU)."""
    iv, _, share = spec.partition("@")
    return float(iv), float(share) if share else None


def poll_share(agent, ip: str, port: int, spec: str, seconds: float = 1.0) -> dict:
    """CPU busy fraction while a poller runs `seconds` and never succeeds."""
    iv, share = setting(spec)
    b0, t0 = cpu_busy()
    res = agent.poll(ip, port, "gone", interval=iv / 1000, timeout=seconds, max_cpu_share=share)
    b1, t1 = cpu_busy()
    return {"busy": (b1 - b0) / max(1, t1 - t0), "attempts": res["attempts"], "agent_cpu": res["cpu_share"]}


def conntrack_count(ns: str) -> int:
    """Connection-tracking entries of namespace `ns`."""
    from harness.lab.netns import run

    return int(run(ns, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout.strip() or 0)


def soak(agent, dp, lab, services, extra, pos: int, seconds: float) -> list[dict]:
    """Applies alone (no poller) before and after `seconds` of a 1 ms poller at a Service that is not
    programmed (each attempt leaves a SYN_SENT conntrack entry, 120 s), then after `conntrack -F`."""
    from harness.lab.netns import run

    ns = lab.node_ns("a")
    after = services[:pos] + [extra] + services[pos:]
    rows = []

    def applies(stage: str) -> None:
        for kind in ("add", "delete", "add", "delete"):
            ct = conntrack_count(ns)
            t0 = time.perf_counter()
            dp.apply(after if kind == "add" else services, Change(kind, extra))
            row = {"stage": stage, "kind": kind, "apply_s": time.perf_counter() - t0, "conntrack": ct}
            rows.append(row)
            print(json.dumps(row), flush=True)

    applies("before soak")
    res = agent.poll(extra.cluster_ip, extra.ports[0].port, "served", interval=0.001, timeout=seconds)
    rows.append({"stage": "soak", "attempts": res["attempts"], "conntrack": conntrack_count(ns)})
    print(json.dumps(rows[-1]), flush=True)
    applies("after soak")
    for n in (ns, lab.client_ns):
        run(n, ["conntrack", "-F"], check=False)
    applies("after conntrack -F")
    return rows


def measure(n: int, rounds: int, intervals: list[str], soak_s: float = 0.0) -> dict:
    from harness.lab.topology import Lab
    from harness.measure.agent import Agent
    from harness.measure.sync import resolution_s

    model = build_model(ModelSpec(n_services=n + 1, endpoints=1))
    services = model.services[:n]
    extra = model.services[n]
    out: dict = {"n": n, "kernel": os.uname().release, "rows": []}
    lab = Lab(model, tag="bsp").up()
    try:
        agent = Agent(lab.client_ns)
        settings = DataplaneSettings(node_ips=(lab.node_ip("a"),))
        dp = make_dataplane("iptables", lab.node_ns("a"), settings, node="a")
        t0 = time.perf_counter()
        dp.full_sync(services)
        out["full_sync_s"] = time.perf_counter() - t0
        last = services[-1]
        ip, port = last.cluster_ip, last.ports[0].port
        res = agent.connect([(ip, port, "last")], samples=200)
        us = [r[1] for r in res if not r[2]]
        out["connect_us_last_p50"] = statistics.median(us) if us else None
        out["poll_share"] = {iv: poll_share(agent, ip, port, iv) for iv in intervals if setting(iv)[0] > 0}
        pos = n // 2
        for r in range(rounds):
            order = intervals[r % len(intervals) :] + intervals[: r % len(intervals)]
            for spec in order:
                iv, share = setting(spec)
                for kind in ("add", "delete"):
                    after = services[:pos] + [extra] + services[pos:] if kind == "add" else services
                    expect = "served" if kind == "add" else "gone"
                    eip, eport = extra.cluster_ip, extra.ports[0].port
                    control = (last.cluster_ip, last.ports[0].port) if kind == "delete" else None
                    if iv > 0:
                        agent.poll_start(
                            eip,
                            eport,
                            expect,
                            interval=iv / 1000,
                            timeout=60,
                            max_cpu_share=share,
                            control=control,
                        )
                    t0n = time.perf_counter_ns()
                    dp.apply(after, Change(kind, extra))
                    t1n = time.perf_counter_ns()
                    row = {"round": r, "interval_ms": spec, "kind": kind, "apply_s": (t1n - t0n) / 1e9}
                    if iv > 0:
                        res = agent.poll_result()
                        row["sync_s"] = (res["t_ns"] - t0n) / 1e9 if res["satisfied"] else None
                        row["attempts"] = res["attempts"]
                        row["detail"] = res["detail"]
                        row["cpu"] = round(res["cpu_share"], 3)
                        if res["satisfied"]:
                            row["res_s"] = resolution_s(res["t_ns"], res["t_prev_ns"], t0n)
                    else:  # not timed: the state must be there all the same
                        res = agent.poll(eip, eport, expect, timeout=10, control=control)
                        if not res["satisfied"]:
                            raise RuntimeError(f"{kind} {extra.name}: '{expect}' not seen")
                    out["rows"].append(row)
                    print(json.dumps(row), flush=True)
        if soak_s > 0:
            out["soak"] = soak(agent, dp, lab, services, extra, pos, soak_s)
        agent.close()
    finally:
        lab.down()
    return out


def summary(out: dict) -> None:
    print(
        f"N={out['n']} kernel={out['kernel']} full_sync {out['full_sync_s']:.2f} s, "
        f"connect to the last Service p50 {out['connect_us_last_p50']:.0f} us"
    )
    for iv, s in out["poll_share"].items():
        print(
            f"  poller {iv} ms, nothing changing: CPU busy {s['busy']:.0%} (agent {s['agent_cpu']:.0%}), "
            f"{s['attempts']} attempts/s"
        )
    print(
        f"{'interval':>9} {'kind':>7} {'apply p50 s':>12} {'sync p50 s':>11} {'attempts':>9} {'res p50 ms':>10} n"
    )
    keys = sorted({(r["interval_ms"], r["kind"]) for r in out["rows"]})
    for iv, kind in keys:
        rs = [r for r in out["rows"] if (r["interval_ms"], r["kind"]) == (iv, kind)]
        ap = statistics.median(r["apply_s"] for r in rs)
        sy = [r["sync_s"] for r in rs if r.get("sync_s") is not None]
        at = [r["attempts"] for r in rs if "attempts" in r]
        rz = [r["res_s"] * 1000 for r in rs if "res_s" in r]
        print(
            f"{iv:>9} {kind:>7} {ap:>12.3f} {statistics.median(sy) if sy else float('nan'):>11.3f} "
            f"{statistics.median(at) if at else 0:>9.0f} {statistics.median(rz) if rz else float('nan'):>10.1f} "
            f"{len(rs)}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--intervals",
        default="0,1,1@0.1,20",
        help="poll intervals in ms, 0 = no poller, I@S = I ms paced to a CPU share S",
    )
    ap.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="then: applies alone before/after this many seconds of a 1 ms poller",
    )
    ap.add_argument("--uml", action="store_true", help="run inside the kpbench UML guest")
    a = ap.parse_args()
    intervals = a.intervals.split(",")
    if a.uml:
        from harness.lab import uml

        argv = [
            sys.executable,
            os.path.abspath(__file__),
            "--services",
            str(a.services),
            "--rounds",
            str(a.rounds),
            "--intervals",
            a.intervals,
            "--soak",
            str(a.soak),
        ]
        with tempfile.TemporaryDirectory(prefix="kpbench-bsp-") as d:
            res = uml.run_guest(
                d, argv, on_line=lambda s: print(s, end="", flush=True), mem="2G", timeout=3600, name="bsp"
            )
        return res.status
    out = measure(a.services, a.rounds, intervals, a.soak)
    summary(out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
