"""The disruption phase on the cluster target, on the offline test cluster (`kpbench cluster up`,
2 nodes): `kpbench run cluster-quick --set measure.disruption.enabled=true` in iptables and
nftables mode, 40 Services.

Real: the prober in a pod-network pod on the probed node through pods/exec, the probed node's
kube-proxy DaemonSet pod deleted and its successor's first full sync read from its metrics through
the API server's node proxy, Services added / moved / deleted through the API. Checks the rows of
every sync kind with their phases, cold skipped with its reason, the sync spans mapped into the
prober's clock (all nodes share this kernel here, so the measured offset must be about zero, and
each attempt's phase agrees with the span), the prober's cost in the point status, and the cluster
left as found. No wall-clock thresholds. Needs root, `make cluster-bins` and `make cluster-images`
(skipped with the reason otherwise); the cluster comes from the fixture `testcluster`.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cluster.kube import Rest, connect
from tests.support.disruption import assert_phases_follow_sync, point_files

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
N = 40
KINDS = {"full", "add", "update", "delete"}  # cold: not reproduced on a cluster (skipped, said why)
PHASES = ("before", "during", "after")
TIMEOUT_US = 500_000


def _state(kubeconfig: str) -> dict:
    """What the run must leave as found: kube-proxy pods Running on every node, the namespaces."""
    rest = Rest(connect(kubeconfig, None).api)
    pods = rest.get("/api/v1/namespaces/kube-system/pods", query={"labelSelector": "k8s-app=kube-proxy"})
    ds = rest.get("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy")
    return {
        "kube_proxy_running": sorted(
            p["spec"]["nodeName"] for p in pods["items"] if p["status"].get("phase") == "Running"
        ),
        "kube_proxy_template": ds["spec"]["template"]["spec"],
        "configmap": rest.get("/api/v1/namespaces/kube-system/configmaps/kube-proxy")["data"],
        "namespaces": sorted(i["metadata"]["name"] for i in rest.get("/api/v1/namespaces")["items"]),
    }


@pytest.fixture(scope="module")
def run(testcluster, tmp_path_factory):
    kc = testcluster.kubeconfig
    before = _state(kc)
    out = tmp_path_factory.mktemp("cluster-disrupt")
    argv = [sys.executable, "-m", "harness", "run", "cluster-quick", "--kubeconfig", kc, "--yes"]
    argv += ["--services", str(N), "--out", str(out), "--no-report"]
    for kv in (
        "measure.load.enabled=false",
        "model.endpoints=1",  # 2 backends: an update has another one to move to
        "measure.connect.samples=50",
        "measure.disruption.enabled=true",
        "measure.disruption.rate=200",
        "measure.disruption.window_s=1",
        f"measure.disruption.timeout_ms={TIMEOUT_US // 1000}",
    ):
        argv += ["--set", kv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    deadline = time.monotonic() + 120  # the last restarted kube-proxy pod may still be starting
    while (after := _state(kc)) != before and time.monotonic() < deadline:
        time.sleep(2)
    (d,) = [x for x in out.iterdir() if x.is_dir()]
    return {"dir": d, "before": before, "after": after, "nodes": testcluster.nodes}


def _point(run_dir: Path, mode: str) -> tuple[dict, list[dict]]:
    return point_files(run_dir, f"cluster-{mode}-{N}-r1")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_rows_phases_and_gaps(run, mode):
    status, rows = _point(run["dir"], mode)
    assert status["status"] == "ok", (status.get("error"), status.get("traceback"))
    conn = [r for r in rows if r["metric"] == "disrupt_connect_us"]
    assert {r["sync"] for r in conn} == KINDS and all(r["target"] == "cluster" for r in conn)
    for kind in KINDS:
        assert {r["phase"] for r in conn if r["sync"] == kind} >= {"before", "after"}, kind
    gaps = {(r["sync"], r["phase"]): r["value"] for r in rows if r["metric"] == "disrupt_gap_ms"}
    assert set(gaps) == {(k, ph) for k in KINDS for ph in PHASES}
    assert all(math.isfinite(v) and v >= 0 for v in gaps.values())
    # the probed Services answered the prober's client pod through the node's kube-proxy rules
    assert sum(1 for r in conn if not r["error"]) > 0.5 * len(conn)
    failed = [r for r in rows if r["metric"] == "disrupt_failed"]
    assert all(r["error"] for r in failed)
    assert all(r["timed_out"] and r["value"] == TIMEOUT_US for r in conn if r["error"])
    assert [r for r in rows if r["metric"] == "disrupt_request_us"]  # the keepalive connections


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_spans_are_kube_proxys_syncs_in_the_probers_clock(run, mode):
    status, rows = _point(run["dir"], mode)
    info = status["disruption"]
    assert set(info["kinds"]) == KINDS | {"cold"}
    assert "not reproduced" in info["kinds"]["cold"]["skipped"]
    assert info["client"].startswith("pod network")
    syncs = info["kube_proxy_syncs"]
    # the probed node's kube-proxy pod deleted three times, each successor's first sync a full one
    assert len(syncs["full"]) == 3 and all(s["full_syncs"] >= 1 for s in syncs["full"])
    assert len(info["restarts"]) == 3 and all(r["restart_s"] > 0 for r in info["restarts"])
    for kind in ("add", "update", "delete"):
        (s,) = syncs[kind]
        assert s["syncs"] >= 1 and s["full_syncs"] == 0  # a change is a partial sync
    # one shared kernel here: the prober's clock is the harness's, so the offset measured over the
    # exec stream must be within its own uncertainty (half the round trip) of zero
    clocks = info["clocks"]
    assert len(clocks) == 1 + len(KINDS)  # the start, then one per prober
    for c in clocks:  # (+0.1 us: the uncertainty is rounded)
        assert abs(c["offset_ns"]) / 1000 <= c["uncertainty_us"] + 0.1, c
    for c in clocks[1:]:  # read again once each prober stopped
        assert abs(c["after_offset_ns"]) / 1000 <= c["after_uncertainty_us"] + 0.1, c
    # kube-proxy's wall-clock times map through the pod's wall - monotonic: the same kernel's here
    # (a slewed wall clock moves it a little over the run, a wrong clock or sign by hours)
    ours = time.time_ns() - time.perf_counter_ns()
    assert all(abs(c["wall_minus_mono_ns"] - ours) < 50_000_000 for c in clocks), (ours, clocks)
    slack_s = max(c["uncertainty_us"] for c in clocks) / 1e6 + 1e-3
    for kind in KINDS:
        k = info["kinds"][kind]
        assert 0 < k["sync_s"] <= k["call_s"] + slack_s, (kind, k)
    sync_rows = {r["sync"]: r for r in rows if r["metric"] == "disrupt_sync_us"}
    assert set(sync_rows) == KINDS
    for kind, r in sync_rows.items():
        assert r["value"] == pytest.approx(info["kinds"][kind]["sync_s"] * 1e6, rel=1e-3, abs=2)
        assert r["seq"] > 0  # the sync's start: us since probing began, in the prober's clock
        assert_phases_follow_sync(rows, r)  # each attempt's phase is its start against the sync


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_prober_slowdown_and_the_rest_of_the_point(run, mode):
    status, rows = _point(run["dir"], mode)
    warm = {r["path"]: r["value"] for r in rows if r["metric"] == "sync_full_warm_s"}
    assert set(warm) == {"quiet", "prober"} and all(v > 0 for v in warm.values())
    assert status["disruption"]["prober_slowdown"] == pytest.approx(warm["prober"] / warm["quiet"], rel=1e-2)
    # the one-change syncs after the phase, with the restarted kube-proxy's counters read afresh
    assert [r for r in rows if r["metric"] == "sync_one_s"]
    assert "metrics" not in status["flags"], status["flags"]


def test_cluster_is_as_it_was_found(run):
    assert run["after"] == run["before"]
    assert sorted(run["after"]["kube_proxy_running"]) == sorted(run["nodes"])
    assert not [n for n in run["after"]["namespaces"] if n.startswith("kpbench-")]
