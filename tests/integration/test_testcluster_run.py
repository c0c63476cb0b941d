"""The cluster target's whole loop on the offline test cluster (`kpbench cluster up`, 2 nodes):
`kpbench run cluster-quick --target cluster --kubeconfig F --yes` in iptables and nftables mode,
then a run killed halfway (after its first mode switch) and `kpbench restore`.

Real: kubelets, containerd, kube-proxy's DaemonSet rolling out after each ConfigMap change, every
node's /proxyMode through the API server's node proxy, `kube-proxy --cleanup` Jobs on both nodes
(cluster option cleanup=always: between iptables and nftables kube-proxy needs none), the probe pod
measuring through pods/exec, kube-proxy's metrics, distributed locust (a master, two workers), and
the report built from the run. Needs root, `make cluster-bins` and `make cluster-images`; skipped
with the reason otherwise. The cluster comes from the session fixture `testcluster`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cluster import ANN_MODIFIED, KP_KEY, LABEL_RUN, RESTART_ANN
from harness.cluster.kube import Rest, connect
from harness.cluster.switch import CM_PATH, DS_PATH

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVICES = "40"  # one count: the loop, not the scaling, is under test


def _kpbench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _snapshot(kubeconfig: str, nodes: list[str]) -> dict:
    """What a run must leave as it found it: kube-proxy's ConfigMap and DaemonSet template (less the
    restart annotation a rollout restart adds), namespaces, Jobs, and the kube-proxy tables of
    every node's nftables (an iptables-mode kube-proxy leaves none)."""
    rest = Rest(connect(kubeconfig, None).api)
    cm = rest.get(CM_PATH)
    tmpl = rest.get(DS_PATH)["spec"]["template"]
    (tmpl["metadata"].get("annotations") or {}).pop(RESTART_ANN, None)
    if not tmpl["metadata"].get("annotations"):
        tmpl["metadata"].pop("annotations", None)
    tables = {}
    for n in nodes:
        out = subprocess.run(
            ["ip", "netns", "exec", n, "nft", "list", "tables"], capture_output=True, text=True
        )
        tables[n] = sorted(line for line in out.stdout.splitlines() if "kube-proxy" in line)
    return {
        "configmap": {
            "data": cm["data"],
            "labels": cm["metadata"].get("labels"),
            "annotations": cm["metadata"].get("annotations"),
        },
        "template": tmpl,
        "namespaces": sorted(i["metadata"]["name"] for i in rest.get("/api/v1/namespaces")["items"]),
        "jobs": sorted(i["metadata"]["name"] for i in rest.get("/apis/batch/v1/jobs")["items"]),
        "nft_kube_proxy_tables": tables,
    }


def _run_dir(out: Path) -> Path:
    (d,) = [x for x in out.iterdir() if x.is_dir()]
    return d


@pytest.fixture(scope="module")
def runs(testcluster, tmp_path_factory):
    kc, nodes = testcluster.kubeconfig, testcluster.nodes
    before = _snapshot(kc, nodes)
    out = tmp_path_factory.mktemp("cluster-run")
    t0 = time.monotonic()
    p = _kpbench(
        "run",
        "cluster-quick",
        "--kubeconfig",
        kc,
        "--yes",
        "--services",
        SERVICES,
        "--out",
        str(out),
        "--no-report",
    )
    run_s = time.monotonic() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    after = _snapshot(kc, nodes)
    return {
        "kubeconfig": kc,
        "nodes": nodes,
        "dir": _run_dir(out),
        "before": before,
        "after": after,
        "run_s": run_s,
        "stderr": p.stderr,
    }


def _points(run_dir: Path) -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in (run_dir / "points").glob("*.json")}


def test_every_point_ok_in_both_modes(runs):
    pts = _points(runs["dir"])
    assert set(pts) == {f"cluster-{m}-{SERVICES}-r1" for m in ("iptables", "nftables")}, sorted(pts)
    for pid, st in pts.items():
        assert st["status"] == "ok", (pid, st.get("error"), st.get("traceback"))
        assert "metrics" not in st["flags"], st["flags"]  # kube-proxy's metrics read through the node proxy
        mode = pid.split("-")[1]
        # the DaemonSet rolled out on both nodes and each node's /proxyMode said the point's mode
        assert st["node_modes"] == dict.fromkeys(runs["nodes"], mode), st["node_modes"]
        assert st["phases"]["mode_switch_s"] > 0 and st["probe_node"] in runs["nodes"]


def test_rows_of_every_measurement(runs):
    import pandas as pd

    d = pd.read_parquet(runs["dir"] / "samples.parquet")
    assert set(d.target) == {"cluster"} and set(d["mode"]) == {"iptables", "nftables"}
    for mode in ("iptables", "nftables"):
        m = d[d["mode"] == mode]
        con = m[m.metric == "connect_us"]
        assert len(con) >= 100 and not con.timed_out.any() and con.value.median() > 0
        assert (m.metric == "connect_direct_us").sum() == 50
        sync = m[m.metric == "sync_one_s"]
        assert len(sync) == 3 and not sync.timed_out.any() and (sync.value > 0).all()
        # one change of each kind (3 samples per point spread over add, update, delete)
        assert sorted(sync.change) == ["add", "delete", "update"], sorted(sync.change)
        assert (m[m.metric == "program_us"].value > 0).all() and (m.metric == "program_us").any()
        # distributed locust: both keepalive phases, raw requests from both workers (fewer than two
        # reporting fails the point), none failed
        req = m[m.metric == "request_us"]
        assert set(req.keepalive) == {"true", "false"} and not req.timed_out.any()
        achieved = m[m.metric == "load_achieved_rps"]
        assert len(achieved) == 2 and (achieved.value > 0).all()


def test_cleanup_jobs_ran_on_every_node_at_every_switch(runs):
    state = json.loads((runs["dir"] / "cluster-restore.json").read_text())
    assert state["status"] == "restored" and state["original_mode"] == "iptables"
    cleanups = [h for h in state["history"] if h["event"] == "cleanup"]
    # iptables -> nftables and nftables -> iptables (restore); each on both nodes
    assert len(cleanups) >= 2 and all(h["nodes"] == len(runs["nodes"]) for h in cleanups)


def test_cluster_is_as_it_was_found(runs):
    assert runs["after"] == runs["before"]
    assert not [n for n in runs["after"]["namespaces"] if n.startswith("kpbench-")]


def test_results_go_through_the_report(runs, tmp_path):
    p = _kpbench("report", str(runs["dir"]), "--out", str(tmp_path / "report"), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    md = next((tmp_path / "report").glob("*.md")).read_text()
    assert "cluster" in md and "nftables" in md


def test_run_killed_halfway_is_put_back_by_kpbench_restore(runs, tmp_path):
    """SIGKILL (no chance to restore) once the run has switched kube-proxy to nftables; then
    `kpbench restore RUN` puts everything back."""
    kc, nodes = runs["kubeconfig"], runs["nodes"]
    out = tmp_path / "killed"
    out.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "cluster-quick", "--kubeconfig", kc, "--yes",
         "--modes", "nftables", "--services", "20", "--out", str(out), "--no-report"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            f = next(out.glob("*/cluster-restore.json"), None)
            if f is not None and any(
                h["event"] == "mode running" and h.get("mode") == "nftables"
                for h in json.loads(f.read_text())["history"]
            ):
                break
            assert p.poll() is None, "the run ended before it switched kube-proxy"
            time.sleep(0.5)
        else:
            pytest.fail("the run did not switch kube-proxy to nftables within 300 s")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    run_dir = _run_dir(out)
    rest = Rest(connect(kc, None).api)
    cm = rest.get(CM_PATH)
    assert "mode: nftables" in cm["data"][KP_KEY] and ANN_MODIFIED in cm["metadata"]["annotations"]
    assert rest.get("/api/v1/namespaces", query={"labelSelector": LABEL_RUN})["items"]  # left by the kill
    r = _kpbench("restore", str(run_dir), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert _snapshot(kc, nodes) == runs["before"]
    assert json.loads((run_dir / "cluster-restore.json").read_text())["status"] == "restored"
    r2 = _kpbench("restore", str(run_dir), timeout=120)
    assert r2.returncode == 0 and "already restored" in r2.stdout
