"""`kpbench run local-ipvs-quick` end to end: the real kube-proxy in IPVS mode inside the UML guest
(this host's kernel has no IPVS), etcd + kube-apiserver on the host in kpb-<tag>-api, reached
from the guest over a TAP device on the API bridge. Needs root, the binaries from `make kube` and
a UML guest; skipped with the reason otherwise. About 3 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.lab import netns, uml
from harness.targets import localcluster as lc
from tests.integration.test_local_target import _our_processes, _points
from tests.support.skips import kube_skip_reason

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow, pytest.mark.uml]

_reason = kube_skip_reason(
    ("ip", "nginx", "nft", "iptables-legacy-save"), "network namespaces, kube-proxy"
) or (None if uml.available()[0] else f"no UML guest: {uml.available()[1]}")
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))

POINT = "local-uml-ipvs-30-r1"


def _guests_of(owner_pid: int) -> list[int]:
    """UML guests started by process `owner_pid` (their uml_dir is kpbench-uml-<owner pid>-...)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if f"kpbench-uml-{owner_pid}-".encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("local-ipvs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "local-ipvs-quick", "--out", str(out), "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=lc.REPO,
    )
    try:
        stdout, stderr = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    (d,) = [x for x in out.iterdir() if x.is_dir()]
    d.joinpath(".owner").write_text(str(proc.pid))
    return d


def test_point_ok_in_the_guest_with_real_kube_proxy_ipvs(run_dir):
    st = _points(run_dir)[POINT]
    assert st["status"] == "ok", (st.get("error"), st.get("validation"))
    assert st["kernel"].startswith("local-uml-")
    assert st["kube_proxy"]["proxy_mode"] == "ipvs"
    assert st["validation"]["passed"], st["validation"]
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["kernel_plan"] == {"ipvs": ["local-uml"]}


def test_rows(run_dir):
    import pandas as pd

    d = pd.read_parquet(run_dir / "samples.parquet")
    assert set(d.target.unique()) == {"local"} and set(d["mode"].unique()) == {"ipvs"}
    for metric in (
        "sync_full_s",
        "connect_us",
        "connect_direct_us",
        "request_us",
        "sync_one_s",
        "sync_apply_s",
        "program_us",
        "api_create_rps",
        "kp_sync_proxy_rules_duration_seconds_count",
        "kp_network_programming_duration_seconds_count",
    ):
        assert (d.metric == metric).any(), metric
    one = d[d.metric == "sync_one_s"]
    assert set(one.change) == {"add", "update", "delete"}
    assert not one.timed_out.any(), one[["change", "value"]]
    assert (d[d.metric == "program_us"].value >= 0).all()


def test_fidelity_kube_proxy_and_lab_agree(run_dir):
    """What kube-proxy installed on node a equals what the lab's IPVS dataplane installs for the
    same 30 Services + default/kubernetes: virtual servers, real servers, addresses, ipsets, rules."""
    st = _points(run_dir)[POINT]
    fid = st["fidelity"]
    assert fid["virtual_servers"] == {"kube_proxy": 31, "lab": 31}, fid
    assert fid["addresses"]["kube_proxy"] == 31, fid
    assert st["fidelity_differences"] == [], st["fidelity_differences"]


def test_nothing_left_behind(run_dir):
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "complete"
    job = json.loads((run_dir / ".jobs" / "local-uml.json").read_text())
    assert not [n for n in netns.list_namespaces() if n.startswith(f"kpb-{job['tag']}-")]
    assert not _our_processes(job["tag"])
    assert not _guests_of(int((run_dir / ".owner").read_text()))
    assert not list((run_dir / ".jobs").glob(f"kpb-{job['tag']}-*"))  # the cluster's work dir (keys, tokens)
    logs = run_dir / "local-logs"
    assert (logs / "kube-apiserver.log").exists() and (logs / "guest-kube-proxy-node-a.log").exists()
