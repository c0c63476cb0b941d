"""The report's findings, units and decision rule: written from the data, readable units from the
registry, one rule for every comparison, thin data named once; runs side by side; publishing."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import analysis, findings, metrics, plots, report, results, units
from harness.commands import report_cmd

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "tests" / "canned" / "run-small"
REAL = ROOT / "tests" / "canned" / "run-real-host"


def test_quantities_take_their_prefix_from_the_value_and_the_unit_from_the_registry():
    assert units.quantity(9.74e-06, "s") == "9.74 us"
    assert units.quantity(1830, "us") == "1.83 ms"
    assert units.quantity(0.4123, "s") == "412 ms"
    assert units.quantity(410, "us", sign=True) == "+410 us"
    assert units.quantity(73.04, "us", prefix="us") == "73.0 us"
    assert units.quantity(12.5, "pct") == "12.5 %" and units.quantity(1234, "count") == "1,234"
    assert units.quantity(float("nan"), "us") == ""
    fmt = units.tick_formatter("us")
    assert fmt(73, 0) == "73 us" and fmt(1500, 0) == "1.5 ms" and fmt(1000, 0) == "1 ms"
    assert units.quantity(metrics.get("sync_full_s") and 0.0196, metrics.unit("sync_full_s")) == "19.6 ms"


def test_one_rule_decides_and_agrees_with_its_ci():
    """The issue's case: a ratio whose CI excludes 1 is a difference, whatever a rank test says."""
    df = results.load(REAL)
    c = analysis.compare_modes(df, "iptables", metrics=["sync_one_s"], n_services=-1, n_boot=500)
    for _, r in c.iterrows():
        excludes_1 = r["ci_lo"] > 1 or r["ci_hi"] < 1
        assert r["significant"] == (excludes_1 and abs(r["ratio"] - 1) >= 0.02)
        assert (r["verdict"] == "no significant difference") == (not r["significant"])
        assert r["diff_lo"] <= r["diff"] <= r["diff_hi"]
    add = c[c["change"] == "add"].iloc[0]
    assert add["ci_hi"] < 1 and add["verdict"] == "2.1x faster"
    assert "excludes 1" in analysis.decision_rule()
    one = analysis.compare_samples([1.0], [2.0, 3.0])
    assert one["verdict"] == analysis.NOT_ENOUGH and not one["enough"]
    # too few to decide on, but the medians are stated (and never a CI)
    assert (one["median_a"], one["median_b"], one["ratio"]) == (1.0, 2.5, 2.5)
    assert np.isnan(one["ci_lo"]) and not one["significant"]
    full = metrics.get("sync_full_s")
    said = findings.compare_sentence(
        50000, full, "nftables", "iptables", analysis.compare_samples([11.8], [17.4])
    )
    assert said == (
        "At 50,000 Services a full sync: nftables 17.4 s, iptables 11.8 s (ratio 1.47); not enough "
        "repetitions to decide (1 and 1 samples; the rule needs 2)."
    )
    none = findings.compare_sentence(
        50000, full, "nftables", "iptables", analysis.compare_samples([], [17.4])
    )
    assert "could not be compared, not enough repetitions (1 and 0 samples" in none


def test_findings_are_sentences_from_the_data():
    rs = results.load_runs(SMALL)
    s = findings.summary(rs.samples, rs.points, n_boot=300)
    host = next(k for k in s["kernels"] if k["kernel"].startswith("host"))
    assert host["n_services"] == 10000 and "the lab" in host["programmed_by"]
    text = " ".join(host["compare"])
    assert "At 10,000 Services a new connection through iptables costs 6.0x nftables's (+" in text
    assert " us, 95% CI +" in text and "full sync through iptables costs" in text
    growth = " ".join(host["growth"])
    assert "iptables: a new connection grows linearly, +29.7 us per 1,000 Services (95% CI" in growth
    assert "nftables: a new connection is flat within noise" in growth
    assert "e-0" not in text + growth  # never 9.74e-06
    uml = next(k for k in s["kernels"] if k["kernel"].startswith("uml"))
    assert any("not enough repetitions" in x for x in uml["compare"])  # one full sync per rep, one rep left
    unmeasured = " ".join(s["unmeasured"])
    assert "failed: uml/ipvs at 10,000 rep 2" in unmeasured and "saturated" in unmeasured
    md = findings.markdown(s)
    assert md.startswith("## Findings") and "Decision rule: different when" in md


def test_crossover_is_found_where_one_mode_overtakes_another():
    med = pd.DataFrame(
        {
            "mode": ["iptables"] * 3 + ["nftables"] * 3,
            "n_services": [100, 1000, 10000] * 2,
            "median": [50.0, 80.0, 300.0, 70.0, 71.0, 72.0],
        }
    )
    (line,) = findings.crossovers(med, metrics.get("connect_us"))
    assert "iptables overtakes nftables" not in line
    assert "nftables overtakes iptables between 100 and 1,000 Services (medians cross near 550" in line
    flat = med.assign(median=[70.0, 71.0, 72.0, 70.0, 71.0, 72.0])
    assert findings.crossovers(flat, metrics.get("connect_us")) == []


def test_tables_name_thin_data_once_and_show_units():
    df = results.load(REAL)
    fits = report.fits_table(df)
    assert fits["rows"] == [] and len(fits["not_enough"]) == 1 and "38 series" in fits["not_enough"][0]
    comp = report.mode_comparison_table(df)
    cells = [c for r in comp["rows"] for c in r]
    assert not any("[, ]" in c or c == "" for c in cells)
    assert any(c.endswith(" ms") for c in cells) and any(c.endswith(" us") for c in cells)
    assert comp["not_enough"] and "sync_full_s" in comp["not_enough"][0]
    q = {t["metric"]: t for t in report.quantile_tables(df)}
    assert q["sync_full_s"]["rows"][0][7].endswith(" ms")  # p50 of a full sync, in ms not "0.0179"


def _args(argv):
    p = argparse.ArgumentParser()
    report_cmd.add_arguments(p)
    return p.parse_args(argv)


def _copy_run(tmp_path: Path, name: str, scale: float = 1.0) -> Path:
    dst = tmp_path / name
    shutil.copytree(REAL, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["run_id"] = name
    (dst / "metadata.json").write_text(json.dumps(meta))
    df = pd.read_parquet(dst / "samples.parquet")
    df["run_id"], df["value"] = name, df["value"] * scale
    df.to_parquet(dst / "samples.parquet", index=False)
    return dst


def test_runs_side_by_side_one_series_per_run(tmp_path, capsys):
    b = _copy_run(tmp_path, "run-b", 1.3)
    df = results.load([REAL, b])
    fig = plots.hashing_vs_chain(df)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"iptables (run-b)", "nftables (run-b)"} <= labels and len(
        [x for x in labels if "iptables" in x]
    ) == 2
    s = findings.summary(df, results.load_points([REAL, b]), n_boot=200)
    assert [k["kernel"].endswith("run run-b") for k in s["kernels"]].count(True) == 1
    assert report_cmd.run(_args([str(REAL), str(b), "-o", str(tmp_path / "r")])) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "run run-b" in md


def test_runs_that_measured_different_things_are_refused_in_one_line(tmp_path, capsys):
    c = _copy_run(tmp_path, "run-c")
    meta = json.loads((c / "metadata.json").read_text())
    meta["scenario"]["measure"]["load"]["enabled"] = False
    (c / "metadata.json").write_text(json.dumps(meta))
    assert report_cmd.run(_args([str(REAL), str(c), "-o", str(tmp_path / "r")])) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot lay runs side by side" in err and "run-c=" in err


def test_publish_writes_a_self_contained_folder(tmp_path, capsys):
    out = tmp_path / "pub"
    assert report_cmd.run(_args([str(REAL), "--publish", str(out)])) == 0
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "report.md", "figures", "samples.parquet", "samples.csv", "metadata.json"} <= names
    html = (out / "index.html").read_text()
    assert (
        html.count("<svg") >= 5
        and 'src="http' not in html
        and html.index("Findings") < html.index("Environment")
    )
    assert (
        len(pd.read_parquet(out / "samples.parquet"))
        == len(pd.read_csv(out / "samples.csv"))
        == len(results.load(REAL))
    )
    assert json.loads((out / "metadata.json").read_text())["run_id"] == results.load_metadata(REAL)["run_id"]
    assert report_cmd.run(_args([str(REAL), "--publish", str(out), "-o", str(tmp_path / "x")])) == 2


def test_report_opens_with_findings_and_moves_environment_to_the_appendix(tmp_path):
    md = Path(report.build_report([REAL], tmp_path)).with_suffix(".md").read_text()
    order = [
        md.index(h)
        for h in ("## Findings", "## Figures", "## Modes compared", "## Appendix", "### Environment")
    ]
    assert order == sorted(order)
    assert "Sync times were programmed by the lab" in md


def test_wait_until_never_returns_before_the_intended_start():
    """The load generator's wait (in its own process: locust patches the whole process)."""
    code = (
        "from harness.measure.load_worker import wait_until, _pc\n"
        "late = []\n"
        "for i in range(40):\n"
        "    t = _pc() + 3_000_000 + i * 10_000\n"
        "    wait_until(t)\n"
        "    late.append(_pc() - t)\n"
        "print(min(late))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 0


def test_load_rows_record_the_generators_own_lateness():
    from harness.measure.load import _rows
    from tests.unit.test_measure_units import CTX, _summary

    recs = [
        [0, 0, 1_000_000, 1_000_500, 1_300_777, 1, "", 1],
        [1, 1, 2_000_000, 2_900_000, 3_000_000, 0, "timeout", 1],
    ]
    rows = _rows(CTX, recs, _summary(), True, 1.0, False)[0]
    late = [r for r in rows if r["metric"] == "request_lateness_us"]
    assert [r["value"] for r in late] == pytest.approx([0.5, 900.0])
    assert all(r["keepalive"] == "true" and r["unit"] == metrics.unit("request_lateness_us") for r in late)
    assert np.isclose([r for r in rows if r["metric"] == "request_corrected_us"][0]["value"], 300.777)


def test_findings_compare_at_the_largest_count_every_mode_reached():
    """A mode missing its largest point (e.g. over budget) moves the comparison to the largest count
    both modes have, instead of leaving it without a baseline."""
    df = results.load(REAL)
    n_max = int(df["n_services"].max())
    assert findings.summary(df)["kernels"][0]["n_services"] == n_max
    cut = df[~((df["mode"] == "iptables") & (df["n_services"] == n_max))]
    k = findings.summary(cut)["kernels"][0]
    assert k["n_services"] == int(cut["n_services"].min()) < n_max
    assert k["compare"] and all(s.startswith(f"At {k['n_services']:,} Services") for s in k["compare"])
