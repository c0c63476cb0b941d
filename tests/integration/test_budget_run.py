"""`kpbench run --budget` on the real lab (host kernel): the plan is printed before the first
point, a too-small or malformed budget exits 2 with nothing started, points that do not fit are
recorded over_budget and measured by --resume, and metadata.json holds projected against actual."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import costmodel as cm

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.kernel, pytest.mark.slow]
SMALL = [
    "quick",
    "--kernel",
    "host",
    "--modes",
    "iptables,nftables",
    "--services",
    "50,200",
    "--set",
    "measure.load.duration_s=1",
]


def kpbench(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(p) -> str:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.mark.parametrize(
    "budget, needle", [("1s", "too small"), ("abc", "not a duration"), ("-5m", "negative")]
)
def test_bad_budget_exits_2_with_nothing_started(tmp_path, budget, needle):
    line = one_line_error(kpbench("run", *SMALL, "--out", str(tmp_path), "--budget", budget))
    assert needle in line and re.search(r"needs at least \d+(m\d\ds|s)", line), line
    assert list(tmp_path.iterdir()) == []  # no run folder, so no worker job: nothing was started


def test_plan_printed_over_budget_recorded_resume_measures_the_rest(tmp_path):
    # the minimum the plan needs, as the error says it; with exactly that budget only the smallest
    # point of each mode fits, and the plan says which points do not
    line = one_line_error(kpbench("run", *SMALL, "--out", str(tmp_path), "--budget", "1s"))
    minimum = re.search(r"give --budget (\S+) or more", line).group(1)
    p = kpbench("run", *SMALL, "--out", str(tmp_path), "--budget", minimum, "--no-report")
    assert p.returncode == 0, (p.stdout, p.stderr)
    err = p.stderr
    plan_at = err.index("plan: 4 points")
    assert err.index("ok host-iptables-50-r1") > plan_at  # printed before the first point
    assert "projected:" in err and "QUADRATIC" in err and "--kernel host asked for" in err
    assert "OVER BUDGET" in err
    for pid in ("host-iptables-200-r1", "host-nftables-200-r1"):
        assert pid in err[plan_at : err.index("ok host-iptables-50-r1")]

    (run,) = [d for d in tmp_path.iterdir() if (d / "metadata.json").exists()]
    meta = json.loads((run / "metadata.json").read_text())
    status = {r["point_id"]: r["status"] for r in meta["points"]}
    assert status["host-iptables-50-r1"] == "ok" and status["host-nftables-50-r1"] == "ok"
    # left out by the plan; measured after all only if the run went faster than projected and
    # what remained of the budget fits them (tests/unit/test_plan_budget.py checks that case)
    over = meta["plan"]["over_budget"]
    assert [o["point_id"] for o in over] == [k for k, v in status.items() if v == "over_budget"]
    assert set(status.values()) <= {"ok", "over_budget"}
    assert all(o["projected_s"] > 0 and "--services 200" in o["command"] for o in over)
    # the worker reports per-phase wall times; the plan holds them against the projection
    for pid in ("host-iptables-50-r1", "host-nftables-50-r1"):
        row = meta["plan"]["points"][pid]
        assert set(row["projected"]) == set(cm.PHASES)
        assert row["actual"]["sync_full"] > 0 and row["actual"]["load"] > 0 and row["actual"]["sync_one"] > 0
        assert "nftables" not in pid or row["full_sync_growth"] == "quadratic"
    phases = {r["phase"]: r for r in meta["plan"]["phases"]}
    assert set(phases) == set(cm.PHASES)
    assert phases["sync_full"]["actual_s"] > 0 and phases["setup"]["actual_s"] > 0
    assert meta["plan"]["projected_total_s"] > 0 and meta["plan"]["actual_total_s"] > 0
    assert "setup_s" in next(r for r in meta["points"] if r["point_id"] == "host-iptables-50-r1")["phases"]
    warn = [ln for ln in err.splitlines() if "warning: budget" in ln]
    assert len(warn) == (1 if over else 0) and all("--resume" in w for w in warn)

    p = kpbench("run", "--resume", str(run), "--budget", "none")
    assert p.returncode == 0, (p.stdout, p.stderr)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "complete" and {r["status"] for r in meta["points"]} == {"ok"}
    assert meta["plan"]["over_budget"] == []
    md = (run / "report" / "report.md").read_text()
    assert "Plan: projected against actual" in md and "| sync_full |" in md


def test_budget_spent_mid_run_stops_the_real_worker_after_its_point(tmp_path):
    """The budget runs out after the first point (set to ~0 after planning, as if the machine had
    slowed down): the host worker is stopped, the point it had begun is discarded whole, the rest
    is over_budget, nothing is left behind, and --resume measures the rest."""
    from harness import runner
    from harness.cli import build_parser
    from harness.commands.scenario_args import scenario_from_args
    from harness.lab import netns
    from harness.targets import make_target

    args = build_parser().parse_args(["run", *SMALL])
    sc = scenario_from_args(args)
    target = make_target(sc, args)
    target.preflight(sc)
    plan = runner.prepare_plan(sc, target, "none")
    plan.budget_s = 1e-9
    run = runner.Run.create(sc, tmp_path)
    before = set(netns.list_namespaces())
    assert runner.execute(run, target, plan=plan) == "over_budget"
    meta = json.loads((run.dir / "metadata.json").read_text())
    status = {r["point_id"]: r["status"] for r in meta["points"]}
    assert status["host-iptables-50-r1"] == "ok"
    assert sorted(v for k, v in status.items() if k != "host-iptables-50-r1") == ["over_budget"] * 3
    assert "spent" in meta["budget_stop"]
    assert sorted(f.name for f in (run.dir / "points").iterdir()) == [
        "host-iptables-50-r1.json",
        "host-iptables-50-r1.jsonl",
    ]
    tag = json.loads((run.dir / ".jobs" / "host.json").read_text())["tag"]
    assert not [n for n in set(netns.list_namespaces()) - before if n.startswith(f"{netns.PREFIX}{tag}-")]
    p = subprocess.run(["pgrep", "-f", f"harness.pointloop {run.dir}"], capture_output=True, text=True)
    assert p.stdout.strip() == ""

    p = kpbench("run", "--resume", str(run.dir), "--no-report")
    assert p.returncode == 0, (p.stdout, p.stderr)
    meta = json.loads((run.dir / "metadata.json").read_text())
    assert {r["status"] for r in meta["points"]} == {"ok"}
