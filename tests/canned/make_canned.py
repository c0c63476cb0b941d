"""Generate tests/canned/run-small/: a deterministic, clearly labelled SYNTHETIC run folder.

    .venv/bin/python tests/canned/make_canned.py [OUT_DIR]

Not a measurement: values are drawn from simple models so the analysis has known answers.
- iptables latencies grow linearly in the number of Services; ipvs and nftables are flat;
- two kernels ("host" with iptables + nftables, "uml" with iptables + ipvs, latencies x3),
  two repetitions, Service counts 100, 1000, 5000, 10000;
- some connect samples at the largest counts time out (kept at the 1 s timeout value);
- one saturated point (host iptables 10000 r1, keepalive=false), one failed point
  (uml ipvs 10000 r2, no samples).

metadata.json says "synthetic": true; the analysis code must not depend on that field.
The same rows go through harness.results.write_samples/merge_points, as a real run's would.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness import results  # noqa: E402
from harness.samples import PointContext, SampleWriter  # noqa: E402

RUN_ID = "20250101T000000Z-canned"
KERNELS = {"host": "6.18.0-synthetic", "uml": "6.1.0-synthetic"}
PLAN = {"iptables": ["host", "uml"], "nftables": ["host"], "ipvs": ["uml"]}
COUNTS = [100, 1000, 5000, 10000]
REPS = [1, 2]
SEED = 20250101
TIMEOUT_US = 1_000_000.0
SATURATED = "host-iptables-10000-r1"
FAILED = "uml-ipvs-10000-r2"

SCENARIO = {
    "name": "canned-small",
    "target": "lab",
    "kernel": "auto",
    "modes": ["iptables", "ipvs", "nftables"],
    "services": {"counts": COUNTS},
    "endpoints": 2,
    "repetitions": len(REPS),
    "iptables_backend": "legacy",
    "measure": {
        "connect": {"samples": 40, "timeout_s": 1.0, "positions": ["random", "first", "last"]},
        "sync": {"changes": 5},
        "load": {"rate": 1000, "duration_s": 10, "keepalive": [True, False]},
    },
}


def per_service_us(mode: str) -> float:
    """Synthetic extra connect cost per Service (us): linear for iptables, none otherwise."""
    return {"iptables": 0.03}.get(mode, 0.0)


def point_rows(ctx: PointContext, mode: str, kname: str, n: int, rng: np.random.Generator):
    k = 3.0 if kname == "uml" else 1.0  # UML inflates absolute latency
    rows = []
    lin = per_service_us(mode)

    def lognorm(center: float, size: int, sigma: float = 0.12) -> np.ndarray:
        return center * rng.lognormal(0.0, sigma, size)

    # sync
    full = {"iptables": 0.02 + 2.0e-5 * n, "ipvs": 0.01 + 1.2e-5 * n, "nftables": 0.015 + 0.8e-5 * n}[
        mode
    ] * k
    rows.append(ctx.row("sync_full_s", lognorm(full, 1, 0.05)[0], "s"))
    for change in ("add", "update", "delete"):
        one = {"iptables": 0.01 + 1.5e-5 * n, "ipvs": 0.003, "nftables": 0.004}[mode] * k
        for s, v in enumerate(lognorm(one, 5, 0.08)):
            rows.append(ctx.row("sync_one_s", v, "s", seq=s, change=change))
    for s, v in enumerate(lognorm(0.002 * k, 5)):
        rows.append(ctx.row("sync_apply_s", v, "s", seq=s))
    # connect probes
    for position in ("random", "first", "last"):
        frac = {"random": 0.5, "first": 0.0, "last": 1.0}[position]
        center = (60.0 + 2 * lin * n * frac) * k
        vals = lognorm(center, 40)
        n_to = (2 if n == max(COUNTS) else 0) if mode == "iptables" and position != "first" else 0
        for s, v in enumerate(vals):
            to = s < n_to
            rows.append(
                ctx.row(
                    "connect_us",
                    TIMEOUT_US if to else v,
                    "us",
                    seq=s,
                    timed_out=to,
                    position=position,
                    **({"error": "timeout"} if to else {}),
                )
            )
    for s, v in enumerate(lognorm(45.0 * k, 20)):
        rows.append(ctx.row("connect_direct_us", v, "us", seq=s, path="direct"))
    # load
    for ka in (True, False):
        center = (150.0 + (0 if ka else 60.0 + lin * n)) * k
        req = lognorm(center, 100, 0.2)
        for s, v in enumerate(req):
            rows.append(ctx.row("request_us", v, "us", seq=s, keepalive=ka))
            rows.append(
                ctx.row("request_corrected_us", v * (1 + 0.05 * rng.random()), "us", seq=s, keepalive=ka)
            )
        sat = ctx.point_id == SATURATED and not ka
        achieved = 780.0 if sat else 1000.0 * (1 - 0.001 * rng.random())
        rows += [
            ctx.row("load_target_rps", 1000.0, "rps", keepalive=ka),
            ctx.row("load_achieved_rps", achieved, "rps", keepalive=ka),
            ctx.row("load_requests", round(achieved * 10), "count", keepalive=ka),
            ctx.row("load_failures", 0.0, "count", keepalive=ka),
            ctx.row("load_client_cpu_pct", 35.0 + 5 * rng.random(), "pct", keepalive=ka),
        ]
        busy = (8.0 + (0 if ka else 4.0 + 0.0025 * n * (mode == "iptables"))) * (
            1 + 0.05 * rng.standard_normal()
        )
        rows += [
            ctx.row("cpu_busy_pct", busy, "pct", keepalive=ka),
            ctx.row("cpu_softirq_s", busy * 0.06, "s", keepalive=ka),
            ctx.row("cpu_system_s", busy * 0.03, "s", keepalive=ka),
            ctx.row("cpu_user_s", 0.2 + 0.01 * rng.random(), "s", keepalive=ka),
        ]
    return rows


def make(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    (out / "points").mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    points, order = [], 0
    log = ["2025-01-01 00:00:00,000 INFO SYNTHETIC canned run generated by tests/canned/make_canned.py"]
    for n in COUNTS:
        for rep in REPS:
            for mode in ("iptables", "ipvs", "nftables"):
                for kname in PLAN[mode]:
                    pid = f"{kname}-{mode}-{n}-r{rep}"
                    ctx = PointContext(
                        RUN_ID, pid, "lab", f"{kname}-{KERNELS[kname]}", mode, "legacy", n, 2, rep
                    )
                    status, error, flags = "ok", None, {}
                    if pid == FAILED:
                        status, error = "failed", "synthetic failure: ipvsadm-restore timed out after 120 s"
                    else:
                        with open(out / "points" / f"{pid}.jsonl", "w") as fh:
                            SampleWriter(fh).extend(point_rows(ctx, mode, kname, n, rng))
                    if pid == SATURATED:
                        flags = {"saturated": {"keepalive=false": {"target_rps": 1000, "achieved_rps": 780}}}
                    validation = {"clusterip": True, "nodeport": True, "session_affinity": True}
                    st = {
                        "point_id": pid,
                        "status": status,
                        "error": error,
                        "flags": flags,
                        "validation": validation if status == "ok" else None,
                    }
                    (out / "points" / f"{pid}.json").write_text(json.dumps(st) + "\n")
                    points.append(
                        {
                            "point_id": pid,
                            "kernel": kname,
                            "mode": mode,
                            "n_services": n,
                            "rep": rep,
                            "order": order,
                            **{k: v for k, v in st.items() if k != "point_id"},
                        }
                    )
                    log.append(
                        f"2025-01-01 00:{order // 60:02d}:{order % 60:02d},000 INFO point {pid}: {status}"
                    )
                    order += 1
    results.merge_points(out)
    results.merge_points(out)  # idempotent: a second merge adds nothing
    shutil.rmtree(out / "points")  # the fixture keeps only the merged table
    meta = {
        "schema_version": 1,
        "run_id": RUN_ID,
        "synthetic": True,
        "note": "SYNTHETIC fixture generated by tests/canned/make_canned.py - not a measurement",
        "harness": {"version": "0.1.0", "git_sha": "synthetic"},
        "target": "lab",
        "kernels": [{"name": k, "release": r} for k, r in KERNELS.items()],
        "kernel_plan": PLAN,
        "tools": {
            "iptables": "iptables v1.8.9 (legacy)",
            "ipvsadm": "ipvsadm v1.31",
            "nft": "nftables v1.0.9",
            "locust": "2.40.0",
        },
        "machine": {"cpu_model": "Synthetic CPU @ 1.00GHz", "cores": 2, "memory_gb": 4.0},
        "python": {"version": "3.11.7"},
        "scenario": SCENARIO,
        "started": "2025-01-01T00:00:00+00:00",
        "ended": "2025-01-01T00:40:00+00:00",
        "status": "complete",
        "points": points,
        "validation": {
            f"{k}/{m}": {"clusterip": True, "nodeport": True, "hairpin": m != "ipvs"}
            for m, ks in PLAN.items()
            for k in ks
        },
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "scenario.yaml").write_text(
        "# SYNTHETIC canned scenario\n" + yaml.safe_dump(SCENARIO, sort_keys=False)
    )
    (out / "run.log").write_text("\n".join(log) + "\n")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "run-small"
    print(make(target))
