"""The disruption phase on the local target: real kube-proxy (iptables and nftables) on the host
kernel, 300 Services, `kpbench run local-quick` with measure.disruption enabled.

Checks the rows of every sync kind with their phases, that the phases come from kube-proxy's own
sync (its span inside the call that caused it, the warm one a full sync by kube-proxy's metrics),
that a sync's gap is measured, the with/without-prober ratio in the point status, and that the
one-change syncs still ran afterwards. No wall-clock thresholds. Needs root and `make kube`
(skipped with the reason otherwise). About 2 minutes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness.targets import localcluster as lc
from tests.support.disruption import assert_phases_follow_sync, point_files
from tests.support.skips import kube_skip_reason

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow]


_reason = kube_skip_reason(("ip", "nginx", "nft", "iptables-legacy-save"), "network namespaces, kube-proxy")
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))

N = 300
KINDS = {"full", "cold", "add", "update", "delete"}
PHASES = ("before", "during", "after")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("local-disrupt")
    argv = [sys.executable, "-m", "harness", "run", "local-quick", "--out", str(out), "--no-report"]
    argv += ["--services", str(N), "--modes", "iptables,nftables"]
    for kv in (
        "validate=false",
        "measure.load.enabled=false",
        "local.fidelity=false",
        "model.endpoints=1",
        "measure.connect.samples=100",
        "measure.disruption.enabled=true",
        "measure.disruption.rate=200",
        "measure.disruption.window_s=0.5",
        "measure.disruption.timeout_ms=300",
    ):
        argv += ["--set", kv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=lc.REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (d,) = [x for x in out.iterdir() if x.is_dir()]
    return d


def _point(run_dir: Path, mode: str) -> tuple[dict, list[dict]]:
    return point_files(run_dir, f"local-{mode}-{N}-r1")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_rows_phases_and_gaps(run_dir, mode):
    status, rows = _point(run_dir, mode)
    assert status["status"] == "ok", status.get("error")
    conn = [r for r in rows if r["metric"] == "disrupt_connect_us"]
    assert {r["sync"] for r in conn} == KINDS
    for kind in KINDS:
        assert {r["phase"] for r in conn if r["sync"] == kind} >= {"before", "after"}, kind
    assert all(r["target"] == "local" for r in conn)
    gaps = {(r["sync"], r["phase"]): r["value"] for r in rows if r["metric"] == "disrupt_gap_ms"}
    assert set(gaps) == {(k, ph) for k in KINDS for ph in PHASES}
    assert all(math.isfinite(v) and v >= 0 for v in gaps.values())
    # from empty, the probed Services are refused until kube-proxy's first sync: a gap, and failures
    assert gaps[("cold", "during")] > 0
    failed = [r for r in rows if r["metric"] == "disrupt_failed"]
    assert all(r["error"] for r in failed)
    assert [r for r in failed if r["sync"] == "cold"]
    assert all(r["timed_out"] and r["value"] == 300_000 for r in conn if r["error"])


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_phases_are_kube_proxys_syncs(run_dir, mode):
    status, rows = _point(run_dir, mode)
    info = status["disruption"]
    assert set(info["kinds"]) == KINDS
    syncs = info["kube_proxy_syncs"]
    # the restart's first sync is a full one (kube-proxy's sync_full_proxy_rules metric), one per call
    assert len(syncs["full"]) == 3 and all(s["full_syncs"] >= 1 for s in syncs["full"])
    assert syncs["cold"][0]["full_syncs"] >= 1
    for kind in ("add", "update", "delete"):
        (s,) = syncs[kind]
        assert s["syncs"] >= 1 and s["full_syncs"] == 0  # a change is a partial sync
    for kind, k in info["kinds"].items():
        # the sync's own span lies inside the call that caused it (restart / API call .. seen)
        assert 0 < k["sync_s"] <= k["call_s"], kind
    sync_rows = {r["sync"]: r for r in rows if r["metric"] == "disrupt_sync_us"}
    assert set(sync_rows) == KINDS
    for kind, r in sync_rows.items():
        assert r["value"] == pytest.approx(info["kinds"][kind]["sync_s"] * 1e6, rel=1e-3, abs=2)
        assert_phases_follow_sync(rows, r)  # each attempt's phase is its start against the sync


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_prober_slowdown_and_the_rest_of_the_point(run_dir, mode):
    status, rows = _point(run_dir, mode)
    warm = {r["path"]: r["value"] for r in rows if r["metric"] == "sync_full_warm_s"}
    assert set(warm) == {"quiet", "prober"} and all(v > 0 for v in warm.values())
    assert status["disruption"]["prober_slowdown"] == pytest.approx(warm["prober"] / warm["quiet"], rel=1e-2)
    assert status["kube_proxy"]["proxy_mode"] == mode
    assert {r["change"] for r in rows if r["metric"] == "sync_one_s"} == {"add", "update", "delete"}
    meta = json.loads((run_dir / "metadata.json").read_text())
    point = next(p for p in meta["points"] if p["point_id"] == status["point_id"])
    assert point["disruption"]["prober_slowdown"] == status["disruption"]["prober_slowdown"]
