"""The plan and the budget: duration parsing, the cost model, which points fit, over-budget marking."""

import json

import pytest

from harness import costmodel as cm, plan as pl, runner
from harness.scenario import load_scenario, parse_override


# -- durations --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30m", 1800),
        ("1h30m", 5400),
        ("900s", 900),
        ("900", 900),
        ("1h", 3600),
        ("2m30s", 150),
        ("1.5h", 5400),
        (" 45S ", 45),
        (900, 900),
    ],
)
def test_parse_duration(text, seconds):
    assert pl.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["none", "None", "unlimited", None])
def test_parse_duration_none_means_no_budget(text):
    assert pl.parse_duration(text) is None


@pytest.mark.parametrize("text", ["abc", "", "30x", "m", "1m1h", "h30", "30 minutes"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        pl.parse_duration(text)


def test_parse_duration_rejects_negative():
    with pytest.raises(ValueError, match="negative"):
        pl.parse_duration("-5m")


def test_fmt_duration():
    assert pl.fmt_duration(45) == "45s"
    assert pl.fmt_duration(750) == "12m30s"
    assert pl.fmt_duration(3900) == "1h05m"
    assert pl.fmt_duration(None) == "none"
    assert pl.fmt_duration(0.2) == "1s"  # rounded up: a budget suggestion never falls short


# -- cost model -------------------------------------------------------------------------------
def test_nftables_full_sync_quadratic_iptables_linear():
    for target, kernel in (("lab", "host"), ("lab", "uml"), ("local", "host")):
        nft = cm.MODE[(target, kernel, "nftables")].sync_full
        ipt = cm.MODE[(target, kernel, "iptables")].sync_full
        assert nft.growth == "quadratic" and ipt.growth == "linear"
        # doubling N at large N: ~4x for nftables, ~2x for iptables
        assert nft(40000) / nft(20000) > 3.0
        assert ipt(40000) / ipt(20000) < 2.1
    assert "QUADRATIC" in cm.ruleset("lab", "uml", "nftables")
    assert "legacy" in cm.ruleset("local", "local", "iptables", "legacy")


def test_measured_anchor_figures_are_reproduced():
    # stop 9 (lab, UML): nftables full-sync phase ~340 s at 10k; stop 10 (local, host): iptables
    # one change 0.99 s at 10k. The model must stay within 30% of the figures it was fitted to.
    assert cm.MODE[("lab", "uml", "nftables")].sync_full(10000) == pytest.approx(340, rel=0.3)
    assert cm.MODE[("local", "host", "iptables")].sync_one(10000) == pytest.approx(0.99, rel=0.3)
    assert cm.MODE[("local", "uml", "ipvs")].sync_full(300) == pytest.approx(49.1, rel=0.3)  # pinned guest


def test_kernel_names_of_every_target_map_to_host_or_uml():
    assert [cm.kernel_kind(k) for k in ("host", "uml", "local", "local-uml")] == [
        "host",
        "uml",
        "host",
        "uml",
    ]


def test_phases_follow_the_scenario():
    sc = load_scenario("quick")
    shape = cm.PointShape("lab", "host", "iptables", 200)
    ph = cm.base_phases(sc, shape, validate=True, api_delta=200)
    assert set(ph) == set(cm.PHASES) - {"setup"}
    assert ph["api"] == 0  # the lab has no API
    kc = cm.KERNEL[("lab", "host")]
    assert ph["load"] == pytest.approx(kc.load_start + 2 * (3 + kc.load_overhead))  # 3 s: not adaptive
    assert cm.base_phases(sc, shape, validate=False, api_delta=0)["validate"] == 0
    flat = load_scenario("quick", [parse_override("kube_proxy_version=v1.34.12")])  # the bitmap allocator
    local = cm.base_phases(
        flat, cm.PointShape("local", "local", "iptables", 200), validate=False, api_delta=150
    )
    assert local["api"] == pytest.approx(2 * 150 / cm.API_OBJECTS_PER_S)


def test_one_change_syncs_are_capped_at_the_sync_timeout():
    sc = load_scenario("quick")  # 6 changes, timeout 10 s
    ph = cm.base_phases(sc, cm.PointShape("local", "local-uml", "ipvs", 50000), validate=False, api_delta=0)
    assert ph["sync_one"] == pytest.approx(6 * 10)


def test_actual_phases_from_a_worker_status():
    st = {
        "seconds": 20.0,
        "phases": {
            "validate_s": 1.0,
            "api_reconcile_s": 2.0,
            "sync_full_s": 5.0,
            "connect_s": 1.0,
            "load_keepalive_false_s": 4.0,
            "load_keepalive_true_s": 4.0,
            "sync_one_s": 3.0,
            "setup_s": 9.0,
        },
    }
    a = cm.actual_phases(st)
    assert a == {
        "validate": 1.0,
        "api": 2.0,
        "sync_full": 3.0,
        "connect": 1.0,
        "load": 8.0,
        "sync_one": 3.0,
        "other": pytest.approx(2.0),
    }


def test_refiner_scales_the_remaining_points_by_the_largest_measured():
    r = cm.Refiner()
    s1 = cm.PointShape("lab", "uml", "nftables", 1000)
    s2 = cm.PointShape("lab", "uml", "nftables", 5000)
    r.observe(s1, {"sync_full": 10.0, "load": 30.0}, {"sync_full": 30.0, "load": 30.0})
    r.observe(s2, {"sync_full": 100.0, "load": 30.0}, {"sync_full": 200.0, "load": 33.0})
    later = cm.PointShape("lab", "uml", "nftables", 20000)
    assert r.refine(later, {"sync_full": 1000.0})["sync_full"] == pytest.approx(2000.0)
    # a smaller point measured afterwards does not override the larger one
    r.observe(s1, {"sync_full": 10.0}, {"sync_full": 50.0})
    assert r.factor(later, "sync_full") == pytest.approx(2.0)
    # an unmeasured mode of the same kernel takes the median factor of the measured ones
    other = cm.PointShape("lab", "uml", "ipvs", 20000)
    assert r.factor(other, "sync_full") == pytest.approx(statistics_median([2.0, 1.1]))
    # another kernel: no evidence, unchanged
    assert r.factor(cm.PointShape("lab", "host", "ipvs", 20000), "sync_full") == 1.0


def statistics_median(xs):
    import statistics

    return statistics.median(xs)


def test_refiner_ignores_phases_too_short_to_say_anything():
    r = cm.Refiner()
    s = cm.PointShape("lab", "host", "iptables", 50)
    r.observe(s, {"sync_full": 0.05, "validate": 0.3}, {"sync_full": 0.2, "validate": 3.0})
    assert r.factors == {}


# -- the plan ---------------------------------------------------------------------------------
KP = {"iptables": ["uml"], "ipvs": ["uml"], "nftables": ["uml"]}


def default_points(max_n=50000, release=None):
    extra = [(["kube_proxy_version"], release)] if release else []
    sc = load_scenario("default", [(["services"], {"max": max_n, "min": 1000}), *extra])
    return sc, runner.plan_points(sc, KP)


def test_no_budget_keeps_every_point():
    sc, pts = default_points()
    plan = pl.build_plan(sc, "lab", KP, pts, "none")
    assert all(p.fits for p in plan.points) and plan.over_budget == []
    assert plan.projected_total == pytest.approx(sum(p.total for p in plan.points))
    # setup charged once per kernel group, validation once per mode
    assert sum(1 for p in plan.points if p.projected["setup"] > 0) == 1
    assert sum(1 for p in plan.points if p.projected["validate"] > 0) == 3


def test_budget_leaves_out_what_does_not_fit_and_says_so():
    sc, pts = default_points(release="v1.34.12")  # nftables' quadratic family
    plan = pl.build_plan(sc, "lab", KP, pts, "30m")
    assert plan.projected_total <= 1800
    over = {p.point.point_id for p in plan.over_budget}
    assert "uml-nftables-50000-r1" in over  # projected at hours: quadratic full sync
    # one point of each mode always fits
    assert {p.point.mode for p in plan.included if p.point.n_services == 1000} == {
        "iptables",
        "ipvs",
        "nftables",
    }
    # a cheaper, later point still gets in after an expensive one is left out
    assert "uml-ipvs-50000-r1" not in over
    text = plan.render("RUNDIR")
    for pid in over:
        assert pid in text
    assert text.count("OVER BUDGET") == len(over)
    assert (
        "kpbench run RUNDIR/scenario.yaml --services 50000 --modes nftables --kernel uml --budget none"
        in text
    )
    assert "kpbench run --resume RUNDIR --budget none" in text
    assert "QUADRATIC" in text
    meta = plan.to_meta("RUNDIR")
    json.dumps(meta)
    assert {o["point_id"] for o in meta["over_budget"]} == over
    assert all(o["projected_s"] > 0 for o in meta["over_budget"])


def test_a_larger_budget_fits_more():
    sc, pts = default_points()
    n = [len(pl.build_plan(sc, "lab", KP, pts, b).included) for b in ("3m", "8m", "30m", "4h")]
    assert n == sorted(n) and n[0] < n[-1] == len(pts)


@pytest.mark.parametrize(
    "budget, needle",
    [
        ("1m", "too small"),
        ("abc", "not a duration"),
        ("-5m", "negative"),
    ],
)
def test_bad_budget_names_the_minimum(budget, needle):
    sc, pts = default_points()
    with pytest.raises(pl.BudgetError) as e:
        pl.build_plan(sc, "lab", KP, pts, budget)
    msg = str(e.value)
    assert needle in msg and "needs at least" in msg and "\n" not in msg
    minimum = pl.build_plan(sc, "lab", KP, pts, "none").minimum_s
    assert pl.fmt_duration(minimum) in msg


def test_budget_of_exactly_the_minimum_measures_one_point_per_mode():
    sc, pts = default_points()
    minimum = pl.build_plan(sc, "lab", KP, pts, "none").minimum_s
    plan = pl.build_plan(sc, "lab", KP, pts, f"{int(minimum) + 1}s")
    assert sorted((p.point.mode, p.point.n_services) for p in plan.included) == [
        ("iptables", 1000),
        ("ipvs", 1000),
        ("nftables", 1000),
    ]


def test_kernel_reasons(monkeypatch):
    monkeypatch.setattr(pl, "_host_lacks", lambda mode, backend: "no IPVS here" if mode == "ipvs" else None)
    sc = load_scenario("quick")
    plan = pl.build_plan(
        sc,
        "lab",
        {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]},
        runner.plan_points(sc, {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}),
        None,
    )
    assert "bridge" in plan.kernel_reasons["iptables"]
    assert plan.kernel_reasons["ipvs"] == "no IPVS here: measured in the UML guest"
    assert "every mode on one kernel" in pl.kernel_reason(sc, "nftables", ["uml"])
    assert plan.kernel_reasons["nftables"] == "the host kernel runs it"
    # run order: the host group first, then the guest's (one worker per kernel)
    kernels = [p.point.kernel for p in plan.points]
    assert kernels == sorted(kernels, key=lambda k: k != "host")


def test_scenario_budget_field():
    assert load_scenario("default").budget == "30m"
    assert load_scenario("paper-50k").budget == "none"
    assert load_scenario("quick").budget == "none"
    assert load_scenario("quick", [parse_override("budget=1h")]).budget == "1h"


# -- the runner: budget spent mid-run -----------------------------------------------------------
class StatusTarget:
    """A target that reports each point finished with given phase times (runner logic only: no
    measurement; the real workers are exercised by tests/integration/test_budget_run.py)."""

    name = "lab"

    def __init__(self, kernel_plan, seconds=10.0):
        self.kernel_plan = kernel_plan
        self.measured = []
        self.rounds = 0
        self.scale = seconds / 10.0
        self.now = 0.0  # the run's clock: advanced by the time each point reports

    def clock(self):
        return self.now

    def plan(self, scenario):
        return self.kernel_plan

    def environment(self, kernel_plan):
        return {}

    def run_points(self, run, points, sink):
        self.rounds += 1
        for p in points:
            self.measured.append(p.point_id)
            k = self.scale
            st = {
                "point_id": p.point_id,
                "status": "ok",
                "seconds": 10.0 * k,
                "phases": {
                    "sync_full_s": 4.0 * k,
                    "connect_s": 1.0 * k,
                    "load_keepalive_false_s": 2.0 * k,
                    "load_keepalive_true_s": 2.0 * k,
                    "sync_one_s": 1.0 * k,
                },
            }
            self.now += st["seconds"]
            (run.dir / "points" / f"{p.point_id}.jsonl").write_text("")
            (run.dir / "points" / f"{p.point_id}.json").write_text(json.dumps(st))
            sink({"event": "point_done", "point_id": p.point_id, "status": "ok", "seconds": 10.0})


def test_budget_spent_mid_run_finishes_the_point_marks_the_rest_and_resume_measures_them(tmp_path):
    sc = load_scenario("quick", [parse_override("modes=[iptables,nftables]")])
    kp = {"iptables": ["host"], "nftables": ["host"]}
    target = StatusTarget(kp)
    plan = runner.prepare_plan(sc, target, "none")
    plan.budget_s = 5.0  # the machine got slower than projected: the budget is gone after one 10 s point
    run = runner.Run.create(sc, tmp_path)
    events = []
    status = runner.execute(run, target, events.append, plan=plan, clock=target.clock)
    assert status == "over_budget"
    assert target.measured == ["host-iptables-50-r1"]
    meta = json.loads((run.dir / "metadata.json").read_text())
    st = {p["point_id"]: p["status"] for p in meta["points"]}
    assert st == {
        "host-iptables-50-r1": "ok",
        "host-nftables-50-r1": "over_budget",
        "host-iptables-200-r1": "over_budget",
        "host-nftables-200-r1": "over_budget",
    }
    assert meta["status"] == "incomplete" and "budget" in meta["budget_stop"]
    assert [o["point_id"] for o in meta["plan"]["over_budget"]] == [
        "host-nftables-50-r1",
        "host-iptables-200-r1",
        "host-nftables-200-r1",
    ]
    # projected against actual, per phase and in total
    row = meta["plan"]["points"]["host-iptables-50-r1"]
    assert row["actual"]["sync_full"] == 4.0 and row["actual"]["load"] == 4.0 and row["projected_s"] > 0
    phases = {p["phase"]: p for p in meta["plan"]["phases"]}
    assert set(phases) == set(cm.PHASES) and phases["sync_full"]["actual_s"] == 4.0
    assert meta["plan"]["actual_total_s"] is not None and meta["plan"]["projected_total_s"] > 0
    assert any(e.get("event") == "plan_table" for e in events)
    assert any(e.get("event") == "eta" for e in events)

    resumed = runner.Run.resume(run.dir)
    target2 = StatusTarget(kp)
    status = runner.execute(
        resumed, target2, plan=runner.prepare_plan(resumed.scenario, target2, None, resumed)
    )
    assert status == "complete"
    assert target2.measured == ["host-nftables-50-r1", "host-iptables-200-r1", "host-nftables-200-r1"]
    meta = json.loads((run.dir / "metadata.json").read_text())
    assert meta["status"] == "complete" and meta["plan"]["over_budget"] == []
    assert set(meta["plan"]["points"]) == {p["point_id"] for p in meta["points"]}  # earlier rows kept
    assert meta["plan"]["earlier"][0]["budget_s"] == 5.0


def test_report_lists_projected_against_actual_and_over_budget_points():
    from harness.report import plan_tables

    meta = {
        "run_id": "r1",
        "plan": {
            "budget_text": "30m",
            "projected_total_s": 100.0,
            "actual_total_s": 120.0,
            "phases": [{"phase": ph, "projected_s": 10.0, "actual_s": 12.0} for ph in cm.PHASES],
            "over_budget": [
                {
                    "point_id": "uml-nftables-50000-r1",
                    "projected_s": 8000.0,
                    "command": "kpbench run R/scenario.yaml --services 50000 --modes nftables",
                }
            ],
        },
    }
    (t,) = plan_tables([meta, {"run_id": "old run without a plan"}])
    assert t["budget"] == "30m"
    assert [r[0] for r in t["phases"]["rows"]] == [*cm.PHASES, "total"]
    assert t["over_budget"]["rows"][0][0] == "uml-nftables-50000-r1"
    assert "--services 50000" in t["over_budget"]["rows"][0][2]


def test_a_failed_points_time_counts_as_other():
    a = cm.actual_phases({"status": "failed", "error": "SyncError: ...", "seconds": 61.7})
    assert a["other"] == pytest.approx(61.7) and a["sync_full"] == 0


def test_a_mode_without_figures_is_projected_as_iptables_and_said():
    mc = cm.mode_costs("lab", "host", "ebpf-someday")
    assert mc.sync_full == cm.MODE[("lab", "host", "iptables")].sync_full
    assert "no measured cost figures" in cm.ruleset("lab", "host", "ebpf-someday")


def test_a_run_faster_than_projected_measures_left_out_points_with_what_remains(tmp_path):
    sc = load_scenario("quick", [parse_override("modes=[iptables,nftables]")])
    kp = {"iptables": ["host"], "nftables": ["host"]}
    target = StatusTarget(kp, seconds=0.2)  # every phase far below its projection
    plan = runner.prepare_plan(sc, target, "1h")
    need = plan.minimum_s
    plan = runner.prepare_plan(sc, target, f"{int(need) + 1}s")
    assert [p.point.point_id for p in plan.over_budget] == ["host-iptables-200-r1", "host-nftables-200-r1"]
    run = runner.Run.create(sc, tmp_path)
    events = []
    assert runner.execute(run, target, events.append, plan=plan, clock=target.clock) == "complete"
    assert target.rounds == 2  # the planned points, then the two that fit what remained
    assert target.measured[2:] == ["host-iptables-200-r1", "host-nftables-200-r1"]
    assert any("of the budget left: measuring 2 more" in e.get("message", "") for e in events)
    meta = json.loads((run.dir / "metadata.json").read_text())
    assert meta["plan"]["over_budget"] == [] and {r["status"] for r in meta["points"]} == {"ok"}
    assert all(row["fits"] for row in meta["plan"]["points"].values())


def test_a_run_as_slow_as_projected_leaves_them_out(tmp_path):
    sc = load_scenario("quick", [parse_override("modes=[iptables,nftables]")])
    target = StatusTarget({"iptables": ["host"], "nftables": ["host"]}, seconds=10.0)
    need = runner.prepare_plan(sc, target, "1h").minimum_s
    plan = runner.prepare_plan(sc, target, f"{int(need) + 1}s")
    run = runner.Run.create(sc, tmp_path)
    # 10 s points refine the projection to about what it was: nothing more fits the second left
    assert runner.execute(run, target, plan=plan, clock=target.clock) == "over_budget"
    assert target.rounds == 1


def test_refit_keeps_the_models_figures_and_refines_once():
    sc = load_scenario("quick", [parse_override("modes=[iptables,nftables]")])
    kp = {"iptables": ["host"], "nftables": ["host"]}
    pts = runner.plan_points(sc, kp)
    need = pl.build_plan(sc, "lab", kp, pts, None).minimum_s
    plan = pl.build_plan(sc, "lab", kp, pts, f"{int(need) + 1}s")
    first = plan.included[0]
    plan.observe(
        first.point.point_id,
        {
            "status": "ok",
            "seconds": 5.0,
            "phases": {
                "load_keepalive_false_s": first.projected["load"] / 4,
                "load_keepalive_true_s": first.projected["load"] / 4,
            },
        },
    )
    left_out = [pp.point for pp in plan.over_budget]
    raw = {pp.point.point_id: dict(pp.projected) for pp in pl.project(sc, "lab", left_out)}
    assert plan.refit(left_out, 1e6) == left_out
    for pid, phases in raw.items():
        pp = next(p for p in plan.points if p.point.point_id == pid)
        assert pp.fits and pp.projected == phases
    done = [pp.point.point_id for pp in plan.points if pp.point.point_id not in raw]
    f = plan.refiner.factor(first.shape, "load")
    assert f == pytest.approx(0.5)
    # load refined by the factor once (not twice), the rest of the same kernel by its median
    shapes = {p.point.point_id: p.shape for p in plan.points}
    once = sum(
        sum(v * plan.refiner.factor(shapes[pid], ph) for ph, v in phases.items())
        for pid, phases in raw.items()
    )
    assert plan.remaining(done) == pytest.approx(once)


def test_a_budget_serves_the_bridge_between_kernels_last():
    """iptables in the UML guest beside the host is only the bridge between kernels: when the budget
    cannot hold everything, its large points go before any primary cell (here IPVS at 50,000)."""
    spread = {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}
    sc = load_scenario("default", [(["services"], {"max": 50000, "min": 1000})])
    pts = runner.plan_points(sc, spread)
    assert pl.bridge_cells(sc, spread) == {("iptables", "uml")}
    full = pl.build_plan(sc, "lab", spread, pts, "none")
    bridge_50k = next(p for p in full.points if p.point.point_id == "uml-iptables-50000-r1")
    budget = int(full.projected_total - bridge_50k.total / 2)  # everything but part of that point
    plan = pl.build_plan(sc, "lab", spread, pts, f"{budget}s")
    over = {p.point.point_id for p in plan.over_budget}
    assert "uml-iptables-50000-r1" in over
    assert not any(p.point.mode != "iptables" or p.point.kernel != "uml" for p in plan.over_budget), over
    assert plan.projected_total <= budget


def test_bridge_points_take_the_bridge_cap_of_one_change_syncs():
    """measure.sync.bridge_samples caps only the bridge's points (iptables in the guest beside the
    host), spread over the kinds; the plan projects, shows and records that cap."""
    spread = {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}
    sc = load_scenario(
        "default",
        [(["services"], {"max": 10000, "min": 1000}), parse_override("measure.sync.bridge_samples=9")],
    )
    assert sc.measure.sync.samples == 18
    pts = runner.plan_points(sc, spread)
    caps = {p.point_id: p.sync_per_kind for p in pts}
    assert all(caps[i] == 3 for i in caps if i.startswith("uml-iptables-")), caps
    assert all(caps[i] is None for i in caps if not i.startswith("uml-iptables-")), caps
    plan = pl.build_plan(sc, "lab", spread, pts, "none")
    by_id = {pp.point.point_id: pp for pp in plan.points}
    bridge, ipvs = by_id["uml-iptables-10000-r1"], by_id["uml-ipvs-10000-r1"]
    one = cm.mode_costs("lab", "uml", "iptables").sync_one(10000)
    assert bridge.projected["sync_one"] == pytest.approx(9 * one)
    assert ipvs.projected["sync_one"] > 0 and plan.per_kind(ipvs) == 6 and plan.per_kind(bridge) == 3
    text = plan.render()
    assert "bridge points take 3 one-change sync(s) per kind" in text
    assert plan.to_meta()["points"]["uml-iptables-10000-r1"]["sync_per_kind"] == 3
    # without bridge_samples (or with one no smaller than samples) every point takes the scenario's
    for value in ("null", "18", "30"):
        sc2 = load_scenario("default", [parse_override(f"measure.sync.bridge_samples={value}")])
        assert all(p.sync_per_kind is None for p in runner.plan_points(sc2, spread))


def test_the_plan_says_when_a_projected_one_change_reaches_the_sync_timeout():
    spread = {"iptables": ["host", "uml"], "ipvs": ["uml"], "nftables": ["host"]}
    sc = load_scenario(
        "default",
        [(["services"], {"max": 50000, "min": 1000}), parse_override("measure.sync.timeout_s=5")],
    )
    text = pl.build_plan(sc, "lab", spread, runner.plan_points(sc, spread), "none").render()
    assert "uml-iptables-50000-r1: one change is projected at" in text  # ~9.8 s
    assert "measure.sync.timeout_s 5 s" in text
    assert "uml-iptables-20000-r1: one change" not in text  # ~4.1 s
    assert "host-iptables-50000-r1: one change" not in text
    ok = load_scenario("default", [(["services"], {"max": 50000, "min": 1000})])  # timeout 60 s
    assert (
        "one change is projected"
        not in pl.build_plan(ok, "lab", spread, runner.plan_points(ok, spread), "none").render()
    )
