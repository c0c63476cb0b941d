"""`kpbench run local-quick` end to end: real etcd + kube-apiserver + kube-proxy (iptables and
nftables) on the host kernel. Needs root and the binaries from `make kube` (or KUBE_BIN_DIR);
skipped with the reason otherwise. About 1.5 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.lab import netns
from harness.targets import localcluster as lc
from tests.support.skips import kube_skip_reason

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow]


_reason = kube_skip_reason(("ip", "nginx", "nft", "iptables-legacy-save"), "network namespaces, kube-proxy")
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def _our_processes(tag: str) -> list[str]:
    """kube-proxy / kube-apiserver / etcd processes of the run (their files live in /tmp/kpb-<tag>-*)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (
            any(k in cmd for k in ("kube-proxy", "kube-apiserver", "etcd --name kpb"))
            and f"kpb-{tag}-" in cmd
        ):
            out.append(cmd)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    before = set(netns.list_namespaces())
    p = subprocess.run(
        [sys.executable, "-m", "harness", "run", "local-quick", "--out", str(out), "--no-report"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=lc.REPO,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (d,) = [x for x in out.iterdir() if x.is_dir()]
    d.joinpath(".before").write_text(json.dumps(sorted(before)))
    return d


def _points(run_dir: Path) -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in (run_dir / "points").glob("*.json")}


def test_every_point_ok_for_both_modes(run_dir):
    pts = _points(run_dir)
    assert set(pts) == {f"local-{m}-{n}-r1" for m in ("iptables", "nftables") for n in (50, 200)}
    for pid, st in pts.items():
        assert st["status"] == "ok", (pid, st.get("error"), st.get("validation"))
        assert st["kube_proxy"]["proxy_mode"] in pid


def test_rows(run_dir):
    import pandas as pd

    d = pd.read_parquet(run_dir / "samples.parquet")
    assert set(d.target.unique()) == {"local"}
    assert all(k.startswith("local-") for k in d.kernel.unique())
    for mode in ("iptables", "nftables"):
        m = d[d["mode"] == mode]
        for metric in (
            "sync_full_s",
            "connect_us",
            "connect_direct_us",
            "request_us",
            "sync_one_s",
            "sync_apply_s",
            "program_us",
            "kp_sync_proxy_rules_duration_seconds_sum",
            "kp_sync_proxy_rules_duration_seconds_count",
            "kp_sync_proxy_rules_duration_seconds_bucket",
            "kp_network_programming_duration_seconds_count",
        ):
            assert (m.metric == metric).any(), (mode, metric)
        prog = m[m.metric == "program_us"].value  # API call return -> served; 0 when kube-proxy was faster
        assert (prog >= 0).all() and prog.median() > 0
        assert not m[m.metric == "sync_one_s"].timed_out.any()
    ipt = d[(d["mode"] == "iptables") & (d.metric == "kp_sync_proxy_rules_iptables_total")]
    assert set(ipt.path) >= {"nat", "filter"}
    assert (d[d.metric == "api_create_rps"].value > 0).all()


def test_services_grow_without_recreation(run_dir):
    """50 created for the first point, only the missing 150 (+ what sync_one deleted) for 200;
    the other mode's point of a count recreates only what sync_one deleted (samples: 6)."""
    pts = _points(run_dir)
    created = {pid: st.get("api_create", {}).get("services", 0) for pid, st in pts.items()}
    assert created["local-iptables-50-r1"] == 50
    assert 150 <= created["local-iptables-200-r1"] <= 150 + 6
    assert created["local-nftables-50-r1"] <= 6 and created["local-nftables-200-r1"] <= 6


def test_fidelity_recorded(run_dir):
    for pid, st in _points(run_dir).items():
        fid = st["fidelity"]
        assert fid and all(set(v) == {"kube_proxy", "lab"} for v in fid.values())
        assert st["fidelity_differences"] == [], (pid, st["fidelity_differences"])  # see RUN/fidelity/
        key = "nat_kube_services_rules" if "iptables" in pid else "service_ips"
        assert fid[key]["kube_proxy"] == fid[key]["lab"] > 0, (pid, fid[key])


def test_nothing_left_behind(run_dir):
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "complete"
    before = set(json.loads((run_dir / ".before").read_text()))
    job = json.loads((run_dir / ".jobs" / "local.json").read_text())
    assert not [n for n in netns.list_namespaces() if n.startswith(f"kpb-{job['tag']}-")]
    assert not [n for n in set(netns.list_namespaces()) - before if n.startswith(f"kpb-{job['tag']}")]
    assert not _our_processes(job["tag"])
    assert not list(Path("/tmp").glob(f"kpb-{job['tag']}-*"))  # the cluster's temp dir (keys, tokens)
    assert (run_dir / "local-logs" / "kube-apiserver.log").exists()
