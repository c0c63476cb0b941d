"""The disruption phase on the host kernel's lab: small N, iptables and nftables (and IPVS inside
the UML guest, whose kernel has it).

Runs the point loop on LabPoints with measure.disruption enabled and checks that the rows exist
with their sync / phase tags, that failed attempts are kept as rows, and that nothing is left
behind (namespaces, prober processes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness.lab import netns, uml
from harness.pointloop.lab import LabPoints
from harness.pointloop.loop import JobPoint, PointLoop
from harness.pointloop.worker import Job
from harness.scenario import Scenario
from tests.support.disruption import point_files

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

KINDS = {"full", "cold", "add", "update", "delete"}


def _scenario(mode: str) -> Scenario:
    return Scenario.model_validate(
        {
            "modes": [mode],
            "services": {"counts": [20]},
            "kernel": "host",
            "validate": False,
            "measure": {
                "connect": {"samples": 10, "edge_samples": 0, "direct_samples": 0},
                "sync": {"samples": 3},
                "load": {"enabled": False},
                "disruption": {
                    "enabled": True,
                    "rate": 200,
                    "window_s": 0.3,
                    "keepalive_conns": 1,
                    "timeout_ms": 200,
                    "targets": 4,
                },
            },
        }
    )


def _prober_pids() -> list[str]:
    p = subprocess.run(["pgrep", "-f", "harness.measure.disrupt_prober"], capture_output=True, text=True)
    return p.stdout.split()


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_disruption_rows_on_the_host_lab(tmp_path, mode):
    if mode == "ipvs" and not os.path.exists("/proc/net/ip_vs"):
        pytest.skip("this kernel has no IPVS; runs inside the UML guest (test_ipvs_disruption_in_the_guest)")
    sc = _scenario(mode)
    point = JobPoint(point_id=f"{mode}-20-r0", kernel="host", mode=mode, n_services=20, rep=0)
    job = Job(
        {
            "scenario": sc.model_dump(by_alias=True),
            "points": [point.__dict__],
            "run_id": "t",
            "run_dir": str(tmp_path),
            "kernel": "host",
            "tag": f"dis{os.getpid() % 10000}",
        }
    )
    (tmp_path / "points").mkdir()
    before = set(_prober_pids())
    target = LabPoints(job)
    try:
        target.start()
        tag = target.lab.tag
        PointLoop(target, sc, tmp_path, lambda ev: None).run([point])
    finally:
        target.stop()
    assert not [n for n in netns.list_namespaces() if n.startswith(f"kpb-{tag}-")]
    assert set(_prober_pids()) <= before

    status, rows = point_files(tmp_path, point.point_id)
    assert status["status"] == "ok", status.get("error")
    conn = [r for r in rows if r["metric"] == "disrupt_connect_us"]
    assert {r["sync"] for r in conn} == KINDS
    assert {r["phase"] for r in conn} == {"before", "during", "after"} or {r["phase"] for r in conn} >= {
        "before",
        "after",
    }  # a sub-ms change may hold no attempt start
    gaps = [r for r in rows if r["metric"] == "disrupt_gap_ms"]
    assert {(r["sync"], r["phase"]) for r in gaps} == {
        (k, ph) for k in KINDS for ph in ("before", "during", "after")
    }
    failed = [r for r in rows if r["metric"] == "disrupt_failed"]
    assert all(r["error"] for r in failed)
    assert all(r["timed_out"] and r["value"] == 200_000 for r in conn if r["error"] not in ("",))
    warm = {r["path"]: r["value"] for r in rows if r["metric"] == "sync_full_warm_s"}
    assert set(warm) == {"quiet", "prober"} and all(v > 0 for v in warm.values())
    assert status["disruption"]["prober_slowdown"] > 0
    assert set(status["disruption"]["kinds"]) == KINDS
    # the one-change syncs after the phase still found the N Services (the changes were undone)
    assert [r for r in rows if r["metric"] == "sync_one_s"]


def test_unreachable_targets_are_kept_as_timeouts(tmp_path):
    """A prober against an address nobody answers: every attempt is a row, timed out, not dropped."""
    from harness.measure import disrupt
    from harness.samples import PointContext

    ns = f"kpb-dis{os.getpid() % 10000}-c"
    netns.run(None, ["ip", "netns", "add", ns])
    try:
        netns.run(ns, ["ip", "link", "set", "lo", "up"])
        netns.run(ns, ["ip", "addr", "add", "10.99.0.1/24", "dev", "lo"])
        ctx = PointContext("t", "p", "lab", "host", "none", "", 1, 1, 0)
        obs = disrupt.measure_during(
            ns,
            [("10.99.0.1", 9)],
            lambda: None,
            ctx,
            "full",
            rate=100,
            keepalive=1,
            window_s=0.3,
            timeout=0.1,
        )
    finally:
        netns.run(None, ["ip", "netns", "del", ns])
    conn = [r for r in obs.rows if r["metric"] == "disrupt_connect_us"]
    assert conn and all(r["timed_out"] and r["error"] in ("refused", "pending") for r in conn)
    assert len([r for r in obs.rows if r["metric"] == "disrupt_failed"]) >= len(conn) - 1


@pytest.mark.uml
@pytest.mark.skipif(not uml.available()[0], reason="no UML guest available (install user-mode-linux)")
def test_ipvs_disruption_in_the_guest(tmp_path):
    """IPVS's warm full sync (kube-proxy's first sync keeps what is there) and the other kinds,
    the test above run inside the UML guest."""
    lines: list[str] = []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "--color=no"]
    cmd += ["tests/integration/test_disruption_lab.py", "-k", "host_lab and ipvs"]
    res = uml.run_guest(tmp_path, cmd, on_line=lines.append, mem="2G", timeout=900, name="ipvs-disrupt")
    out = "".join(lines)
    assert res.status == 0, out[-3000:] + res.stderr_tail[-2000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b1 passed", summary) and "skipped" not in summary, summary
