"""The cost model against what runs measured: the refit reproduces the published 50k run, and the
projection follows the adaptive load phases and the one-change cap of the default scenario."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from harness import costmodel as cm
from harness.scenario import load_scenario, parse_override

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "example-50k"


def plan_accuracy():
    spec = importlib.util.spec_from_file_location("plan_accuracy", ROOT / "benchmarks" / "plan_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_refit_projects_the_published_50k_run_within_30_percent():
    meta = json.loads((EXAMPLE / "metadata.json").read_text())
    total, proj, act = plan_accuracy().model_projection(meta, EXAMPLE)
    wall = meta["plan"]["actual_total_s"]
    assert abs(total - wall) <= 0.3 * wall
    # the largest phases
    for phase in ("sync_full", "sync_one", "load"):
        assert abs(proj[phase] - act[phase]) <= 0.3 * act[phase], phase


def test_the_50k_run_is_replayed_with_its_recorded_scenario():
    # the published run's own scenario (adaptive load phases, the one-change cap), not today's
    meta = json.loads((EXAMPLE / "metadata.json").read_text())
    sc = plan_accuracy().recorded_scenario(meta, EXAMPLE)
    assert sc.measure.load.adaptive and sc.measure.sync.samples == 18
    assert cm.load_duration(sc) == sc.measure.load.min_duration_s + cm.LOAD_ADAPTIVE_EXTRA_S
    assert meta["status"] == "complete" and not meta["plan"]["over_budget"]


def test_uml_points_follow_the_measured_cost():
    # the guest pinned to one host CPU, the 18-change phase and the sync_full phase of `kpbench run
    # default --services 50000 --budget none` on a quiet machine (run 20261205T082702Z-013c2a)
    # (IPVS's one-change phase: 2.5 / 2.9 s at 1k / 10k once its apply forked no `cat`, run
    # 20261205T085047Z-481664)
    sc = load_scenario("default", [parse_override("measure.sync.adaptive=false")])
    measured = {
        ("iptables", 10000): (40.1, 3.2),
        ("iptables", 20000): (76.6, 6.1),
        ("iptables", 50000): (169.2, 17.6),
        ("ipvs", 1000): (2.5, 1.6),
        ("ipvs", 10000): (2.9, 10.1),
        ("ipvs", 20000): (None, 25.2),
        ("ipvs", 50000): (None, 107.5),
    }
    for (mode, n), (one, full) in measured.items():
        ph = cm.base_phases(sc, cm.PointShape("lab", "uml", mode, n), validate=False, api_delta=0)
        if one is not None:
            assert ph["sync_one"] == pytest.approx(one, rel=0.15), (mode, n)
        assert ph["sync_full"] == pytest.approx(full, rel=0.2), (mode, n)


def test_adaptive_load_is_projected_at_its_minimum_duration_plus_a_check():
    sc = load_scenario("default")
    L = sc.measure.load
    assert L.adaptive and L.min_duration_s < L.duration_s
    assert cm.load_duration(sc) == L.min_duration_s + cm.LOAD_ADAPTIVE_EXTRA_S
    shape = cm.PointShape("lab", "uml", "ipvs", 1000)
    kc = cm.KERNEL[("lab", "uml")]
    adaptive = cm.base_phases(sc, shape, validate=False, api_delta=0)["load"]
    assert adaptive == pytest.approx(kc.load_start + 2 * (cm.load_duration(sc) + kc.load_overhead))
    fixed = load_scenario("default", [parse_override("measure.load.adaptive=false")])
    assert cm.load_duration(fixed) == L.duration_s
    assert cm.base_phases(fixed, shape, validate=False, api_delta=0)["load"] > adaptive
    # a minimum at or above the duration: the whole duration
    flat = load_scenario("default", [parse_override("measure.load.min_duration_s=10")])
    assert cm.load_duration(flat) == 10


def test_default_one_change_cap_is_six_per_kind():
    sc = load_scenario("default")
    assert cm.sync_changes(sc) == 18


def test_the_load_generator_start_is_charged_once_per_kernel_group():
    from harness import plan as pl, runner

    sc = load_scenario("default", [parse_override("services.max=5000")])
    kp = {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}
    plan = pl.build_plan(sc, "lab", kp, runner.plan_points(sc, kp), "none")
    for kernel in ("host", "uml"):
        loads = [pp.projected["load"] for pp in plan.points if pp.point.kernel == kernel]
        start = cm.KERNEL[("lab", kernel)].load_start
        assert start > 0 and loads[0] == pytest.approx(loads[1] + start)
        assert len(set(loads[1:])) == 1


def test_an_unpaced_poller_is_projected_at_what_it_cost():
    shape = cm.PointShape("lab", "uml", "iptables", 10000)
    paced = load_scenario("default")
    unpaced = load_scenario("default", [parse_override("measure.sync.poll_max_cpu_share=null")])
    one = {
        name: cm.base_phases(sc, shape, validate=False, api_delta=0)["sync_one"] / cm.sync_changes(sc)
        for name, sc in (("paced", paced), ("unpaced", unpaced))
    }
    assert one["unpaced"] == pytest.approx(cm.UNPACED_SYNC_ONE[("lab", "uml", "iptables")](10000))
    # interleaved runs of the point alone: 61.9 / 45.0 s paced against 135.3 s unpaced; inside the
    # whole sweep the paced figure is what the sweep measured, still below the unpaced one
    assert one["paced"] < one["unpaced"]
    host = cm.PointShape("lab", "host", "iptables", 10000)  # no unpaced figure: the same cost
    assert cm.base_phases(paced, host, validate=False, api_delta=0) == cm.base_phases(
        unpaced, host, validate=False, api_delta=0
    )


def test_uml_nftables_v137_one_change_follows_the_measured_cost():
    # v1.37, one endpoint, paced poller, `--kernel uml --modes nftables`: the 18-change phase took
    # 4.66 s at 2,000 and 7.02 s at 10,000 Services (run 20261205T054706Z-4efd72)
    for n, phase in ((2000, 4.66), (10000, 7.02)):
        one = cm.mode_costs("lab", "uml", "nftables", "v1.37.2", 1).sync_one(n)
        assert 18 * one == pytest.approx(phase, rel=0.15)
    # v1.36 (anonymous maps: an add scans every set of the table) keeps the v1.34 figure; so does
    # the real kube-proxy of the local target
    base = cm.MODE[("lab", "uml", "nftables")].sync_one
    assert cm.mode_costs("lab", "uml", "nftables", "v1.36.3", 1).sync_one == base
    assert (
        cm.mode_costs("local", "uml", "nftables", "v1.37.2", 1).sync_one
        == cm.MODE[("local", "uml", "nftables")].sync_one
    )
