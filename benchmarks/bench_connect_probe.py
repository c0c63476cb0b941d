"""Overhead of the connect probe: agent connect_direct_us p50 vs a bare socket connect loop.

The issue's bar: the probe's connect_direct_us p50 is at most 1.5x the p50 of a bare loop (no
harness, no JSON, no agent) doing the same TCP handshakes from the same namespace to the same
pod. Both run alternately in rounds (bare, probe, bare, probe, ...) so machine drift hits both.

    sudo .venv/bin/python benchmarks/bench_connect_probe.py [--samples 2000] [--rounds 5]

Builds a throwaway lab (tests.support.minilab: client -> router -> server with nginx) and
removes it at the end. Prints a table and one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for tests.support

from harness.measure.agent import Agent  # noqa: E402
from harness.measure.connect import measure_connect  # noqa: E402
from harness.model import ModelSpec, build_model  # noqa: E402
from harness.samples import PointContext  # noqa: E402
from tests.support.minilab import MiniLab  # noqa: E402

BARE = r"""
import socket, struct, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lg = struct.pack("ii", 1, 0)
pc = time.perf_counter_ns
out = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, lg)
    t0 = pc(); s.connect((ip, port)); t1 = pc()
    s.close()
    out.append((t1 - t0) / 1000.0)
print(" ".join(f"{x:.3f}" for x in out))
"""


def bare_loop(ns: str, ip: str, port: int, n: int) -> list[float]:
    p = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", BARE, ip, str(port), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in p.stdout.split()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000, help="connects per round and method")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    model = build_model(ModelSpec(n_services=1, endpoints=1))
    ctx = PointContext("bench", "bench", "lab", "host", "none", "", 1, 1, 0)
    bare: list[float] = []
    probe: list[float] = []
    per_round = []
    with MiniLab(model) as lab, Agent(lab.client) as agent:
        ep = model.services[0].endpoints[0]
        bare_loop(lab.client, ep.ip, ep.port, 50)  # warm caches
        for r in range(a.rounds):
            b = bare_loop(lab.client, ep.ip, ep.port, a.samples)
            rows = measure_connect(
                agent, ctx, model.services, 1, 0, random.Random(r), 1.0, direct_samples=a.samples
            )
            p = [x["value"] for x in rows if x["metric"] == "connect_direct_us" and not x["timed_out"]]
            bare += b
            probe += p
            per_round.append((statistics.median(b), statistics.median(p)))
    print(f"{'round':>5} {'bare p50 us':>12} {'probe p50 us':>13} {'ratio':>6}")
    for i, (b, p) in enumerate(per_round):
        print(f"{i:>5} {b:>12.1f} {p:>13.1f} {p / b:>6.2f}")
    bp, pp = statistics.median(bare), statistics.median(probe)
    q = lambda xs, f: sorted(xs)[int(f * (len(xs) - 1))]  # noqa: E731
    print(f"{'all':>5} {bp:>12.1f} {pp:>13.1f} {pp / bp:>6.2f}   (bar: <= 1.50)")
    print(
        json.dumps(
            {
                "bare_p50_us": bp,
                "probe_p50_us": pp,
                "ratio": pp / bp,
                "bare_p90_us": q(bare, 0.9),
                "probe_p90_us": q(probe, 0.9),
                "samples_each": len(bare),
                "rounds": a.rounds,
                "pass": pp <= 1.5 * bp,
            }
        )
    )
    return 0 if pp <= 1.5 * bp else 1


if __name__ == "__main__":
    sys.exit(main())
