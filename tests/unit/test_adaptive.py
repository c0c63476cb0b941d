"""The adaptive stopping rule on deterministic sample streams."""

import random

from harness.measure.adaptive import MIN_FOR_CI, StopRule, ci_halfwidth_rel, median_ci, spread_order


def feed(rule: StopRule, stream, key="s") -> int:
    """Samples taken from `stream` until the rule stops."""
    taken = 0
    for v in stream:
        if rule.done():
            break
        rule.add(key, v)
        taken += 1
    return taken


def test_no_ci_below_six_samples():
    assert median_ci([1.0] * (MIN_FOR_CI - 1)) is None
    med, lo, hi = median_ci([1, 2, 3, 4, 5, 6])
    assert (med, lo, hi) == (3.5, 1, 6)


def test_ci_ranks_narrow_inward_with_more_samples():
    xs = list(range(1, 101))
    med, lo, hi = median_ci(xs)
    assert med == 50.5
    assert 40 <= lo < med < hi <= 61  # binomial ranks 40 and 61 for n=100


def test_constant_stream_stops_at_the_floor():
    rule = StopRule(cap=50, floor=8)
    assert feed(rule, [2.0] * 100) == 8
    s = rule.summary()["s"]
    assert s["samples"] == 8 and s["ci_met"] and s["ci_rel"] == 0.0


def test_floor_never_below_what_a_ci_needs():
    rule = StopRule(cap=50, floor=1)
    assert feed(rule, [2.0] * 100) == MIN_FOR_CI


def test_noisy_stream_runs_to_the_cap_and_says_the_ci_was_not_met():
    rule = StopRule(cap=20, floor=6)
    stream = [1.0 if i % 2 else 3.0 for i in range(100)]
    assert feed(rule, stream) == 20
    s = rule.summary()["s"]
    assert s["samples"] == 20 and not s["ci_met"] and s["ci_rel"] > 0.05


def test_tight_stream_stops_once_within_five_percent():
    # +-1% around 10 after a wide start: stops once the order-statistic CI excludes the wide values
    stream = [5.0, 15.0] + [10.0 + 0.1 * ((i * 7) % 3 - 1) for i in range(200)]
    rule = StopRule(cap=200, floor=6)
    n = feed(rule, stream)
    assert MIN_FOR_CI < n < 200
    assert ci_halfwidth_rel(rule.series["s"]) <= 0.05
    assert ci_halfwidth_rel(rule.series["s"][:-1]) > 0.05  # not one sample later than needed


def test_every_series_must_meet_the_rule():
    rule = StopRule(cap=30, floor=6)
    for i in range(30):
        if rule.done():
            break
        rule.add("add", 1.0)
        rule.add("delete", 1.0 if i % 2 else 2.0)
    assert len(rule.series["add"]) == 30


def test_cap_below_floor_caps():
    rule = StopRule(cap=3, floor=6)
    assert feed(rule, [1.0, 5.0, 9.0, 2.0]) == 3


def test_spread_order_prefixes_cover_the_range():
    order = spread_order(7)
    assert sorted(order) == list(range(7))
    assert order[:2] == [0, 4] and max(order[:4]) >= 5
    assert spread_order(0) == [] and spread_order(1) == [0]


class SteadyAgent:
    """Connects in a constant 50 us, or alternating 50 / 500 us (wide): deterministic streams."""

    def __init__(self, wide=False):
        self.wide, self.n = wide, 0

    def connect(self, targets, samples=1, timeout=1.0):
        out = []
        for i, _t in enumerate(targets):
            self.n += 1
            out.append([i, 500.0 if self.wide and self.n % 2 else 50.0, ""])
        return out


def _connect(agent, spent):
    from harness.measure.connect import measure_connect
    from harness.model import ModelSpec, build_model
    from harness.samples import PointContext

    m = build_model(ModelSpec(n_services=50))
    ctx = PointContext("run", "pt", "lab", "host", "iptables", "legacy", 50, 1, 0)
    return measure_connect(
        agent,
        ctx,
        m.services,
        50,
        2000,
        random.Random(0),
        1.0,
        edge_samples=300,
        direct_samples=500,
        adaptive=spent,
    )


def test_connect_probes_stop_once_every_kind_is_tight_never_below_the_floor():
    spent: dict = {}
    rows = _connect(SteadyAgent(), spent)
    assert len(rows) < 2000 + 600 + 500
    for kind, metric in (
        ("random", "connect_us"),
        ("first", "connect_us"),
        ("last", "connect_us"),
        ("direct", "connect_direct_us"),
    ):
        got = [r for r in rows if r["metric"] == metric and r.get("position", "") in (kind, "")]
        assert len(got) >= 100  # the report's floor (harness.metrics min_samples)
        assert spent[f"{metric} {kind}"]["ci_met"]


def test_connect_probes_take_every_sample_when_the_ci_stays_wide():
    spent: dict = {}
    rows = _connect(SteadyAgent(wide=True), spent)
    assert len(rows) == 2000 + 600 + 500
    assert not spent["connect_us random"]["ci_met"] and spent["connect_us random"]["samples"] == 2000
    assert len(_connect(SteadyAgent(), None)) == 3100  # not adaptive: every planned attempt


def test_a_seventh_sample_gives_the_same_ci_ranks_as_six():
    # why the default one-change cap is 6 per kind: the order-statistic 95% CI of the median is
    # [x1, xn] for n = 6, 7 and 8; it first narrows (to [x2, x8]) at n = 9
    for n in (6, 7, 8):
        xs = list(range(1, n + 1))
        assert median_ci(xs)[1:] == (1, n)
    assert median_ci(list(range(1, 10)))[1:] == (2, 8)


def test_load_rule_floor_is_the_minimum_duration_or_the_reports_floor():
    from harness.measure.adaptive import load_stop_rule
    from harness.metrics import min_samples

    assert load_stop_rule(cap=2000, floor=600).floor == 600
    report = min_samples()["request_us"]
    assert load_stop_rule(cap=2000, floor=10).floor == report  # a short minimum: the report's floor
    assert load_stop_rule(cap=50, floor=600).floor == 50  # never above the whole schedule


def test_load_rule_needs_both_latency_series_within_five_percent():
    from harness.measure.adaptive import load_stop_rule

    rule = load_stop_rule(cap=2000, floor=600)
    tight = [500.0 + (i % 11) for i in range(600)]  # +-1%
    rule.series = {"request_us": tight, "request_corrected_us": tight[:599]}
    assert not rule.done()  # one series below the floor
    wide = [100.0 * 2 ** ((i * 37 % 100) / 10) for i in range(600)]  # 100 us to 93 ms
    rule.series = {"request_us": tight, "request_corrected_us": wide}
    assert not rule.done()  # the corrected latencies (coordinated omission) are still wide
    rule.series = {"request_us": tight, "request_corrected_us": [t + 20 for t in tight]}
    assert rule.done()


def test_schedule_cut_keeps_the_slots_already_due():
    from harness.measure.adaptive import schedule_cut

    period = 5_000_000  # 200 requests/s
    t0 = 1_000_000_000
    assert schedule_cut(t0, period, t0 + 3 * 10**9, 2000) == 601  # slots 0..600 intended by 3 s
    assert schedule_cut(t0, period, t0 + 3 * 10**9 + 1, 2000) == 601
    assert schedule_cut(t0, period, t0 + 3 * 10**9 - 1, 2000) == 600
    assert schedule_cut(t0, period, t0 + 20 * 10**9, 2000) == 2000  # never more than the schedule
    assert schedule_cut(t0, period, t0 - 5, 2000) == 1
