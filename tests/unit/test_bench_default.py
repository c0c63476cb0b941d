"""make bench's default: who programs each cell, the ruleset family and its projected full sync, and
`kpbench run --plan-only` (the plan printed, nothing created)."""

import argparse

import pytest

from harness import costmodel as cm, plan as pl, runner
from harness.commands import run_cmd
from harness.scenario import load_scenario

# the lab's spread kernel plan (harness.lab.caps.plan_kernels(spread=True) on a host without IPVS)
SPREAD = {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}


def scenario(max_n=50000, version=None, endpoints=None):
    over = [(["services"], {"max": max_n, "min": 1000})]
    if version:
        over.append((["kube_proxy_version"], version))
    if endpoints is not None:
        over.append((["model", "endpoints"], endpoints))
    return load_scenario("default", over)


def test_default_scenario_is_the_lab_whatever_was_built():
    assert load_scenario("default").target == "lab"
    text = open("Makefile").read()
    bench_target = next(line for line in text.splitlines() if line.startswith("BENCH_TARGET"))
    assert bench_target.split(":=")[1].strip() == "$(TARGET)"  # not switched by `make kube`'s binaries


def test_every_cell_says_who_programs_it_and_what_real_kube_proxy_would_cost():
    sc = scenario()
    plan = pl.build_plan(sc, "lab", SPREAD, runner.plan_points(sc, SPREAD), "none")
    text = plan.render()
    assert "programmed by: the lab's dataplane" in text
    host_cells = [p for p in plan.points if p.point.kernel == "host"]
    assert {p.point.mode for p in host_cells} == {"iptables", "nftables"}
    assert f"real kube-proxy (--target local) for the {len(host_cells)} host-kernel points" in text
    assert "IPVS has no real-kube-proxy option" in text
    meta = plan.to_meta()
    assert meta["programmed_by"].startswith("the lab's dataplane")
    # a local plan programs with real kube-proxy and has no such note
    kp = {"iptables": ["local"], "ipvs": ["local-uml"], "nftables": ["local"]}
    local = pl.build_plan(sc, "local", kp, runner.plan_points(sc, kp), "none")
    assert "programmed by: real kube-proxy" in local.render() and local.real_kube_proxy_note() is None


def test_plan_states_each_points_ruleset_and_projected_full_sync():
    v137 = scenario(version="v1.37.2")
    plan = pl.build_plan(v137, "lab", SPREAD, runner.plan_points(v137, SPREAD), "none")
    row = plan.to_meta()["points"]["host-nftables-50000-r1"]
    assert "plain `dnat`" in row["ruleset"] and row["full_sync_growth"] == "linear"
    assert row["full_sync_projected_s"] == pytest.approx(
        cm.mode_costs("lab", "host", "nftables", "v1.37.2", 1).sync_full(50000), abs=0.01
    )
    assert "plain `dnat`" in plan.render()


def test_over_budget_points_say_why():
    sc = scenario(version="v1.34.12")
    kp = {"iptables": ["uml"], "ipvs": ["uml"], "nftables": ["uml"]}
    plan = pl.build_plan(sc, "lab", kp, runner.plan_points(sc, kp), "30m")
    text = plan.render("RUNDIR")
    assert "uml-nftables-50000-r1 (" in text and "sync_full " in text.split("uml-nftables-50000-r1 (")[1]
    assert all(o["why"] for o in plan.to_meta()["over_budget"])


class PlanOnlyTarget:
    """A target whose preflight and kernel plan are given: --plan-only must not go further."""

    name = "lab"

    def preflight(self, scenario):
        pass

    def plan(self, scenario):
        return SPREAD

    def run_points(self, *a):
        raise AssertionError("--plan-only measured a point")


def test_plan_only_prints_the_plan_and_creates_nothing(monkeypatch, tmp_path, capsys):
    import harness.targets as targets

    monkeypatch.setattr(targets, "make_target", lambda scenario, args=None: PlanOnlyTarget())
    monkeypatch.setattr(
        runner.Run, "create", classmethod(lambda *a, **k: pytest.fail("a run folder was made"))
    )
    p = argparse.ArgumentParser()
    run_cmd.add_arguments(p)
    args = p.parse_args(["default", "--services", "50000", "--plan-only", "--out", str(tmp_path)])
    assert run_cmd.run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: 24 points, target lab, budget 30m00s")
    for n in (1000, 2000, 5000, 10000, 20000, 50000):
        for pid in (f"host-iptables-{n}-r1", f"host-nftables-{n}-r1", f"uml-ipvs-{n}-r1"):
            assert any(
                ln.split()[:2] == pid.split("-")[:2] and ln.split()[4:5] == [str(n)]
                for ln in out.splitlines()
            ), pid
    assert "projected:" in out
    assert list(tmp_path.iterdir()) == []
