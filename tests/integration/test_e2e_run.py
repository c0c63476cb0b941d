"""End to end: `kpbench run` of the quick scenario, Ctrl-C halfway, --resume, and the report."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import results
from harness.lab import netns

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def kpbench(*args, timeout=900, **kw):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def run_dir_of(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if (d / "metadata.json").exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def no_leftovers(before: set[str], run: Path | None = None):
    """No namespace this test's runs made is left, and no worker of the run still runs."""
    left = set(netns.list_namespaces()) - before
    if run is not None:  # other processes on the machine may make kpb- namespaces: look at ours
        tags = [json.loads(j.read_text())["tag"] for j in (run / ".jobs").glob("*.json")]
        assert tags, "no worker job was written"
        left = {n for n in left if any(n.startswith(f"{netns.PREFIX}{t}-") for t in tags)}
    assert not left, f"lab namespaces left behind: {sorted(left)}"
    if run is not None:
        p = subprocess.run(["pgrep", "-f", f"harness.pointloop {run}"], capture_output=True, text=True)
        assert p.stdout.strip() == "", "worker processes left behind"


@pytest.mark.uml
def test_quick_scenario_all_modes_end_to_end(tmp_path):
    """The quick scenario, all three modes, as `make bench SCENARIO=quick` runs it."""
    before = set(netns.list_namespaces())
    p = kpbench("run", "quick", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    run = run_dir_of(tmp_path)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "complete"
    assert {pt["status"] for pt in meta["points"]} == {"ok"}, [
        pt for pt in meta["points"] if pt["status"] != "ok"
    ]
    df = results.load(run)
    modes = set(df["mode"].astype(str))
    assert modes == {"iptables", "ipvs", "nftables"}
    for mode in modes:
        sub = df[df["mode"] == mode]
        for metric in (
            "sync_full_s",
            "sync_one_s",
            "sync_apply_s",
            "connect_us",
            "connect_direct_us",
            "request_us",
            "cpu_system_s",
        ):
            assert (sub["metric"] == metric).any(), (mode, metric)
    # one-change syncs per kind: the scenario's 2, and 1 at the bridge (iptables in the guest
    # beside the host, measure.sync.bridge_samples 3) where the plan splits iptables over kernels
    one = df[df["metric"] == "sync_one_s"]
    per_kind = one.groupby(["point_id", "change"], observed=True).size()
    bridge = {pt["point_id"] for pt in meta["points"] if pt.get("sync_per_kind")}
    iptables_kernels = set(df[df["mode"] == "iptables"]["kernel"].astype(str).str.split("-").str[0])
    assert bool(bridge) == (iptables_kernels == {"host", "uml"}), (bridge, iptables_kernels)
    for (pid, change), n in per_kind.items():
        assert n == (1 if pid in bridge else 2), (pid, change, n)
    assert all(pid.startswith("uml-iptables-") for pid in bridge), bridge
    # every row names the kernel it was measured on; ipvs only where IPVS exists
    assert df["kernel"].astype(str).str.match(r"^(host|uml)-").all()
    assert set(df[df["mode"] == "ipvs"]["kernel"].astype(str).str.split("-").str[0]) <= {"uml", "host"}
    # validation ran for every mode and kernel before measuring
    assert meta["validation"], "no validation results recorded"
    assert all(v["passed"] for v in meta["validation"].values()), meta["validation"]
    assert (run / "report" / "report.html").exists()
    assert "report:" in p.stdout
    no_leftovers(before, run)


def test_interrupt_keeps_finished_points_and_resume_completes(tmp_path):
    """Ctrl-C after the first point: readable folder, status incomplete, nothing left; --resume finishes it."""
    before = set(netns.list_namespaces())
    args = [
        sys.executable,
        "-m",
        "harness",
        "run",
        "quick",
        "--modes",
        "iptables,nftables",
        "--kernel",
        "host",
        "--set",
        "measure.load.duration_s=1",
        "--out",
        str(tmp_path),
        "--no-report",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    run = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        dirs = [d for d in tmp_path.iterdir() if (d / "points").is_dir()]
        if dirs and list((dirs[0] / "points").glob("*.json")):
            run = dirs[0]
            break
        assert proc.poll() is None, proc.communicate()
    assert run is not None, "no point finished in time"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "--resume" in err
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "incomplete"
    done = [pt for pt in meta["points"] if pt["status"] == "ok"]
    assert 1 <= len(done) < len(meta["points"])
    df = results.load(run)
    assert set(df["point_id"].astype(str)) == {pt["point_id"] for pt in done}
    no_leftovers(before, run)

    p = kpbench("run", "--resume", str(run), "--no-report")
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "complete" and meta.get("resumed")
    assert {pt["status"] for pt in meta["points"]} == {"ok"}
    df = results.load(run)
    assert set(df["point_id"].astype(str)) == {pt["point_id"] for pt in meta["points"]}
    # the points measured before the interrupt were not measured again
    assert (
        df.groupby("point_id", observed=True)["metric"].apply(lambda m: (m == "sync_full_s").sum()).max() == 1
    )
    no_leftovers(before, run)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--services", "abc"], "--services"),
        (["run", "quick", "--set", "measure.load.rat=3"], "measure.load.rat"),
        (["run", "quick", "--modes", "iptables,bogus"], "modes"),
        (["run", "quick", "--services", "2000000"], "service CIDR"),
        (["run", "--resume", "/nonexistent/run"], "not a kpbench run folder"),
        (["report", "/nonexistent/run"], "/nonexistent/run"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle):
    p = kpbench(*args, timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr
