"""The metric registry: every metric the code writes is registered with a unit that matches its
name and its measured values; the sample writer rejects what is not registered; the report,
plots and README take their metric lists and units from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness import analysis, metrics, report, results
from harness.measure.load import _rows
from harness.samples import PointContext
from harness.targets.local_worker import metric_rows

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "canned" / "run-real-host"
CANNED = ROOT / "tests" / "canned" / "run-small"
CTX = PointContext("run", "pt", "lab", "host", "iptables", "legacy", 10, 1, 0)
# Writers whose metric name is computed, not a literal: each is exercised below.
DYNAMIC_WRITERS = {"harness/measure/load.py", "harness/targets/local_kubeproxy.py"}


def _row_calls():
    """(file, metric literal or None, unit literal or None) for every `<x>.row(...)` call."""
    files = sorted((ROOT / "harness").rglob("*.py")) + [ROOT / "tests" / "canned" / "make_canned.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "row"
                and node.args
            ):
                continue
            lit = [
                a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                for a in node.args[:3]
            ]
            yield str(path.relative_to(ROOT)), lit[0], lit[2] if len(lit) > 2 else None


def test_every_literal_metric_written_is_registered_in_its_unit():
    calls = list(_row_calls())
    literal = [(f, m, u) for f, m, u in calls if m is not None]
    assert len(literal) >= 30  # the scan sees the writers (measure/, targets/, canned fixture)
    for f, m, u in literal:
        assert metrics.find(m) is not None, f"{f}: {m} not registered"
        if u is not None:
            assert u == metrics.unit(m), f"{f}: {m} written in {u}, registered in {metrics.unit(m)}"
    assert {f for f, m, _ in calls if m is None} == DYNAMIC_WRITERS


def test_dynamic_writers_write_registered_metrics():
    recs = [
        [0, 0, 1_000_000, 1_000_500, 1_300_777, 1, "", 1],
        [1, 0, 2_000_000, 2_000_000, 3_000_000, 0, "x", 1],
    ]
    summary = {
        "target_rps": 100.0,
        "achieved_rps": 100.0,
        "requests": 2,
        "failures": 1,
        "missed": 0,
        "connections": 2,
        "client_cpu_pct": 10.0,
        "proc_stat": [[0, 100, 0, 50, 800, 0, 0, 10, 0, 2], [10**9, 200, 0, 80, 1500, 0, 0, 30, 0, 2]],
    }
    rows, *_ = _rows(CTX, recs, summary, False, 1.0, True)  # raises on an unregistered metric
    assert {"request_us", "load_achieved_rps", "load_missed", "cpu_busy_pct", "cpu_count"} <= {
        r["metric"] for r in rows
    }
    kp = metric_rows(
        CTX,
        {
            'kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"}': 1.5,
            'kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}': 3,
            'kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"}': 1,
            'kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"}': 0.2,
            'kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}': 120,
            'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}': 1e9,
        },
    )
    units = {r["metric"]: r["unit"] for r in kp}
    assert units == {
        "kp_sync_proxy_rules_duration_seconds_sum": "s",
        "kp_sync_proxy_rules_duration_seconds_count": "count",
        "kp_sync_proxy_rules_duration_seconds_bucket": "count",
        "kp_network_programming_duration_seconds_sum": "s",
        "kp_sync_proxy_rules_iptables_total": "count",
    }


def test_sample_rows_reject_unregistered_metrics_and_wrong_units():
    assert CTX.row("sync_full_s", 1.5)["unit"] == "s"  # unit filled in from the registry
    assert CTX.row("connect_us", 80.0, "us")["unit"] == "us"
    with pytest.raises(ValueError, match="not in harness/metrics.py"):
        CTX.row("connect_ms", 1.0, "ms")
    with pytest.raises(ValueError, match="registered in 's'"):
        CTX.row("sync_full_s", 1500.0, "us")


def test_names_end_in_their_unit():
    for m in metrics.REGISTRY:
        assert m.unit in metrics.UNITS, m.name
        assert m.min_samples >= 1 and m.what, m.name
        for suffix, unit in metrics.NAME_SUFFIX_UNIT.items():
            if m.name.endswith(suffix):
                assert m.unit == unit, f"{m.name} is registered in {m.unit}"
        if m.unit in metrics.NAME_SUFFIX_UNIT.values() and not m.is_family:
            assert any(m.name.endswith(s) for s, u in metrics.NAME_SUFFIX_UNIT.items() if u == m.unit), m.name
    exact = [m.name for m in metrics.REGISTRY if not m.is_family]
    assert len(exact) == len(set(exact))


# Plausible magnitude of a per-point median by unit on the real host run: a value written in the
# wrong unit (ns as us, ms as s) lands three orders of magnitude outside.
PLAUSIBLE = {"us": (1.0, 1e6), "s": (1e-6, 600.0), "pct": (0.0, 100.0), "rps": (1.0, 1e6)}


def test_real_run_values_are_plausible_in_their_registered_unit():
    df = results.load(REAL)
    q = analysis.point_quantiles(df)
    checked = set()
    for _, r in q.iterrows():
        m = metrics.get(r["metric"])  # every metric of a real run is registered
        assert r["unit"] == m.unit, r["metric"]
        if m.unit in PLAUSIBLE and not r["metric"].startswith("cpu_"):  # cpu_* may be 0 on an idle core
            lo, hi = PLAUSIBLE[m.unit]
            assert lo <= r["p50"] <= hi, (r["metric"], r["p50"], m.unit)
            checked.add(r["metric"])
    assert {"connect_us", "request_us", "sync_one_s", "sync_full_s", "load_achieved_rps"} <= checked


def test_report_units_and_lists_come_from_the_registry():
    df = results.load(CANNED)
    fits = report.fits_table(df)
    i_metric, i_unit = fits["columns"].index("metric"), fits["columns"].index("unit")
    seen = {r[i_metric]: r[i_unit] for r in fits["rows"]}
    assert seen["sync_full_s"] == "s" and seen["cpu_softirq_s"] == "s" and seen["connect_us"] == "us"
    assert set(seen) == {m for m in metrics.names(fit=True) if (df["metric"] == m).any()}
    tables = report.quantile_tables(df)
    assert [t["metric"] for t in tables] == [
        m for m in metrics.names(table=True) if (df["metric"] == m).any()
    ]
    assert all(t["unit"] == metrics.unit(t["metric"]) for t in tables)
    assert analysis.MIN_SAMPLES == {
        "connect_us": 100,
        "connect_direct_us": 100,
        "request_us": 100,
        "request_corrected_us": 100,
    }


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    begin = readme.index("<!-- metric table:")
    table = readme[readme.index("\n", begin) + 1 : readme.index("<!-- end of metric table -->")]
    assert table == metrics.markdown_table(), (
        "run: python -m harness.metrics --markdown, paste into README.md"
    )
    out = subprocess.run(
        [sys.executable, "-m", "harness.metrics", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out == table


def test_registry_imports_with_the_standard_library_only():
    code = (
        "import sys; import harness.metrics, harness.samples; "
        "bad = {'pandas', 'numpy', 'pydantic'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_generator_bad_arguments_exit_2():
    assert metrics.main(["--html"]) == 2
