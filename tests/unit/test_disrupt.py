"""The disruption prober's bookkeeping: phases, gaps, rows and saturation from synthetic records."""

from harness.measure import disrupt
from harness.samples import PointContext

MS = 1_000_000
CTX = PointContext(
    run_id="r",
    point_id="p",
    target="lab",
    kernel="host",
    mode="nftables",
    iptables_backend="",
    n_services=10,
    endpoints=1,
    rep=0,
)


def test_phase_of_uses_the_syncs_own_timestamps():
    assert disrupt.phase_of(99, 100, 200) == "before"
    assert disrupt.phase_of(100, 100, 200) == "during"
    assert disrupt.phase_of(200, 100, 200) == "during"
    assert disrupt.phase_of(201, 100, 200) == "after"


def test_longest_gap_counts_the_window_edges():
    assert disrupt.longest_gap_ms([2 * MS, 3 * MS], 0, 10 * MS) == 7.0
    assert disrupt.longest_gap_ms([], 0, 4 * MS) == 4.0
    assert disrupt.longest_gap_ms([5 * MS], 0, 6 * MS) == 5.0
    assert disrupt.longest_gap_ms([50 * MS], 0, 6 * MS) == 6.0  # outside the window: ignored


def _rec():
    # one attempt per ms from 0 to 99 ms; the ones started 40..59 ms fail (refused, then timeout)
    att = []
    for i in range(100):
        err = "refused" if 40 <= i < 50 else "timeout" if 50 <= i < 60 else ""
        att.append([i * MS, 1000.0 if not err else 5.0, err, 0.0])
    return disrupt.Records(attempts=att, requests=[[10 * MS, 300.0, ""], [45 * MS, 9.0, "reset"]])


def test_rows_tag_sync_and_phase_and_keep_failures():
    rows = disrupt.rows(_rec(), CTX, "full", 30 * MS, 70 * MS, 0, 99 * MS, timeout_s=1.0)
    conn = [r for r in rows if r["metric"] == "disrupt_connect_us"]
    assert len(conn) == 100
    assert {r["sync"] for r in rows} == {"full"}
    phases = [r["phase"] for r in conn]
    assert phases.count("before") == 30 and phases.count("during") == 41 and phases.count("after") == 29
    timeouts = [r for r in conn if r["error"] == "timeout"]
    assert len(timeouts) == 10 and all(r["timed_out"] and r["value"] == 1e6 for r in timeouts)
    failed = [r for r in rows if r["metric"] == "disrupt_failed"]
    assert len(failed) == 20 and {r["error"] for r in failed} == {"refused", "timeout"}
    assert all(r["phase"] == "during" for r in failed)
    gaps = {r["phase"]: r["value"] for r in rows if r["metric"] == "disrupt_gap_ms"}
    assert gaps["during"] == 21.0  # last success at 39 ms, next at 60 ms
    assert gaps["before"] == 1.0 and gaps["after"] == 1.0
    req = [r for r in rows if r["metric"] == "disrupt_request_us"]
    assert [r["error"] for r in req] == ["", "reset"] and req[1]["timed_out"]
    sync = [r for r in rows if r["metric"] == "disrupt_sync_us"]
    assert len(sync) == 1 and sync[0]["value"] == 40_000 and sync[0]["seq"] == 30_000


def test_an_outage_straddling_the_syncs_start_is_one_gap():
    att = [[i * MS, 1.0, "refused" if 20 <= i < 50 else "", 0.0] for i in range(100)]
    rows = disrupt.rows(disrupt.Records(att), CTX, "add", 40 * MS, 45 * MS, 0, 99 * MS, timeout_s=1.0)
    gaps = {r["phase"]: r["value"] for r in rows if r["metric"] == "disrupt_gap_ms"}
    assert gaps["during"] == 31.0  # 19 ms -> 50 ms
    assert gaps["before"] == 21.0  # 19 ms -> the sync's start at 40 ms


def test_pending_at_stop_is_kept_but_not_a_failure():
    att = [[0, 1.0, "", 0.0], [MS, 2.0, "pending", 0.0]]
    rows = disrupt.rows(disrupt.Records(att), CTX, "delete", 0, 0, 0, 2 * MS, timeout_s=1.0)
    assert sum(r["metric"] == "disrupt_connect_us" for r in rows) == 2
    assert not [r for r in rows if r["metric"] == "disrupt_failed"]


def test_saturation_when_attempts_start_late():
    ok = disrupt.Records(attempts=[[i, 1.0, "", 100.0] for i in range(1000)])
    assert ok.saturation() == []
    late = disrupt.Records(attempts=[[i, 1.0, "", 50_000.0 if i % 10 == 0 else 0.0] for i in range(1000)])
    assert late.saturation() and "late" in late.saturation()[0]
    assert disrupt.Records().saturation() == ["no attempt recorded"]


def test_report_table_and_timeline_from_rows():
    import pandas as pd

    from harness import plots, report, samples

    df = pd.DataFrame(disrupt.rows(_rec(), CTX, "full", 30 * MS, 70 * MS, 0, 99 * MS, timeout_s=1.0))
    df[list(samples.TAGS)] = df[list(samples.TAGS)].fillna("")
    t = report.disruption_table(df)
    (row,) = t["rows"]
    cols = dict(zip(t["columns"], row, strict=True))
    assert cols["sync"] == "full" and cols["attempts before"] == "30" and cols["failed % before"] == "0.00"
    assert cols["attempts during"] == "41" and cols["failed % during"] == f"{100 * 20 / 41:.2f}"
    assert cols["longest gap during"] == "21.0 ms"
    fig = plots.disruption_timeline(df)
    assert ("time from the sync's start (ms)", "connect latency (us)") in plots.axis_labels(fig)


def test_the_plan_counts_the_disruption_phase_only_when_enabled():
    from harness import costmodel
    from harness.scenario import Scenario

    mc = costmodel.mode_costs("lab", "host", "iptables")
    assert costmodel.disruption_cost(Scenario(), mc, 1000) == 0.0
    on = Scenario.model_validate(
        {"measure": {"disruption": {"enabled": True, "window_s": 2, "timeout_ms": 1000}}}
    )
    assert costmodel.disruption_cost(on, mc, 1000) > 5 * (2 * 2 + 1)  # five kinds, plus their syncs
