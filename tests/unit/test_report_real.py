"""The analysis and the report work on a real (small) run folder, not only on the synthetic one."""

from pathlib import Path

from harness import analysis, report, results

REAL = Path(__file__).resolve().parents[1] / "canned" / "run-real-host"


def test_real_run_loads_with_every_measurement():
    df = results.load(REAL)
    assert set(df["mode"].astype(str)) == {"iptables", "nftables"}
    metrics = set(df["metric"].astype(str))
    for m in (
        "sync_full_s",
        "sync_one_s",
        "sync_apply_s",
        "connect_us",
        "connect_direct_us",
        "request_us",
        "request_corrected_us",
        "load_achieved_rps",
        "cpu_system_s",
    ):
        assert m in metrics, m
    req = df[df["metric"] == "request_us"]["value"]
    assert (req % 1000 != 0).mean() > 0.9  # microsecond resolution, not locust's whole milliseconds
    q = analysis.point_quantiles(df)
    assert not q.empty


def test_report_renders_from_real_run(tmp_path):
    path = report.build_report([REAL], tmp_path)
    html = Path(path).read_text()
    assert "<svg" in html and "iptables" in html and "nftables" in html
    assert 'src="http' not in html  # self-contained
