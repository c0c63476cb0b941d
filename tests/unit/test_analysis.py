"""Statistics with known answers: quantiles, bands, scaling verdicts, run comparison, data quality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness import analysis
from harness.samples import COLUMNS, PointContext

COUNTS = [100, 1000, 5000, 10000, 20000]


def frame(
    series: dict[tuple[str, int, int], np.ndarray],
    metric: str = "connect_us",
    unit: str = "us",
    kernel: str = "host-6.18",
    timed_out: dict | None = None,
    **tags,
) -> pd.DataFrame:
    """(mode, n, rep) -> values  ->  a sample DataFrame with the real columns."""
    rows = []
    for (mode, n, rep), vals in series.items():
        ctx = PointContext("run", f"{kernel}-{mode}-{n}-r{rep}", "lab", kernel, mode, "legacy", n, 1, rep)
        tos = (timed_out or {}).get((mode, n, rep), set())
        for i, v in enumerate(vals):
            rows.append(ctx.row(metric, v, unit, seq=i, timed_out=i in tos, **tags))
    return pd.DataFrame(rows)[list(COLUMNS)]


def series(fn, reps=3, n_samples=50, sigma=0.03, seed=1, mode="iptables"):
    rng = np.random.default_rng(seed)
    return {
        (mode, n, r): fn(n) * rng.lognormal(0, sigma, n_samples) for n in COUNTS for r in range(1, reps + 1)
    }


def test_quantiles_known_values_and_timeouts_counted():
    vals = np.arange(1, 101, dtype=float)
    vals[-1] = 1e6  # one sample timed out, recorded at the timeout value
    df = frame({("iptables", 10, 1): vals}, timed_out={("iptables", 10, 1): {99}})
    q = analysis.point_quantiles(df)
    assert len(q) == 1
    r = q.iloc[0]
    assert r["count"] == 100 and r["timed_out"] == 1
    assert r["p50"] == pytest.approx(50.5)
    assert r["p90"] == pytest.approx(np.quantile(vals, 0.9))
    assert r["max"] == 1e6  # included, not dropped
    assert r["mean"] == pytest.approx(vals.mean())


def test_bands_minmax_and_ci():
    df = frame(
        {
            ("ipvs", 100, 1): np.full(5, 10.0),
            ("ipvs", 100, 2): np.full(5, 12.0),
            ("ipvs", 100, 3): np.full(5, 14.0),
        }
    )
    b = analysis.bands(df, "p50", how="minmax").iloc[0]
    assert (b["center"], b["lo"], b["hi"], b["n_reps"]) == (12.0, 10.0, 14.0, 3)
    c = analysis.bands(df, "p50", how="ci").iloc[0]
    assert c["lo"] < 12.0 < c["hi"] and c["center"] == pytest.approx(12.0)


def test_linear_series_slope_one_and_marginal_cost():
    df = frame(series(lambda n: 0.02 * n))  # 20 us per 1,000 Services, no base cost
    f = analysis.scaling_fits(df).iloc[0]
    assert f["verdict"] == analysis.LINEAR
    assert f["slope_lo"] <= 1.0 <= f["slope_hi"]
    assert f["slope"] == pytest.approx(1.0, abs=0.03)
    assert f["per_1k"] == pytest.approx(20.0, rel=0.05)
    assert f["per_1k_lo"] > 0 and f["per_1k_unit"] == "us"


def test_linear_with_base_cost_is_still_linear():
    df = frame(series(lambda n: 80 + 0.03 * n))  # log-log slope well below 1
    f = analysis.scaling_fits(df).iloc[0]
    assert f["slope"] < 0.6
    assert f["verdict"] == analysis.LINEAR
    assert f["per_1k"] == pytest.approx(30.0, rel=0.1)


def test_flat_series():
    df = frame(series(lambda n: 90.0, sigma=0.1, mode="ipvs"))
    f = analysis.scaling_fits(df).iloc[0]
    assert f["verdict"] == analysis.FLAT
    assert f["slope_lo"] <= 0 <= f["slope_hi"] or abs(f["rel_change"]) < 0.05
    assert abs(f["slope"]) < 0.02


def test_sublinear_and_shrinking_series():
    f = analysis.scaling_fits(frame(series(lambda n: 40 * np.log(n)))).iloc[0]
    assert f["verdict"] == analysis.SUBLINEAR
    f = analysis.scaling_fits(frame(series(lambda n: 1000.0 / np.log(n)))).iloc[0]
    assert f["verdict"] == analysis.SHRINKS


def test_seconds_metric_marginal_cost_in_its_registered_unit():
    df = frame(series(lambda n: 1e-5 * n), metric="sync_one_s", unit="s", change="add")
    f = analysis.scaling_fits(df).iloc[0]
    assert f["per_1k"] == pytest.approx(0.010, rel=0.05)  # 10 ms per 1,000 Services
    assert f["per_1k_unit"] == "s"  # the metric's unit (harness.metrics), never relabelled
    assert f["change"] == "add"


def test_too_few_points_is_insufficient():
    df = frame({("iptables", 100, 1): np.ones(10), ("iptables", 1000, 1): np.ones(10) * 2})
    assert analysis.scaling_fits(df).iloc[0]["verdict"] == analysis.INSUFFICIENT


def test_fits_never_mix_kernels():
    a = frame(series(lambda n: 0.02 * n), kernel="host-6.18")
    b = frame(series(lambda n: 90.0), kernel="uml-6.1")
    f = analysis.scaling_fits(pd.concat([a, b]))
    assert dict(zip(f["kernel"], f["verdict"], strict=True)) == {
        "host-6.18": analysis.LINEAR,
        "uml-6.1": analysis.FLAT,
    }


def test_compare_detects_2x():
    rng = np.random.default_rng(7)
    a = rng.lognormal(np.log(100), 0.2, 400)
    b = 2 * rng.lognormal(np.log(100), 0.2, 400)
    r = analysis.compare_samples(a, b)
    assert r["significant"] and r["verdict"] == "2.0x slower"
    assert r["ci_lo"] < 2.0 < r["ci_hi"] and r["p_value"] < 1e-6
    assert analysis.compare_samples(b, a)["verdict"] == "2.0x faster"


def test_compare_identical_and_same_distribution():
    rng = np.random.default_rng(3)
    a = rng.lognormal(np.log(100), 0.2, 400)
    r = analysis.compare_samples(a, a.copy())
    assert not r["significant"] and r["verdict"] == "no significant difference"
    assert r["ratio"] == 1.0 and r["p_value"] == pytest.approx(1.0)
    b = rng.lognormal(np.log(100), 0.2, 400)
    assert analysis.compare_samples(a, b)["verdict"] == "no significant difference"


def test_compare_frames_per_point():
    rng = np.random.default_rng(5)
    da = frame({("iptables", n, 1): rng.lognormal(np.log(100), 0.1, 200) for n in (100, 1000)})
    db = frame(
        {
            ("iptables", 100, 1): rng.lognormal(np.log(100), 0.1, 200),
            ("iptables", 1000, 1): 1.8 * rng.lognormal(np.log(100), 0.1, 200),
        }
    )
    c = analysis.compare(da, db, n_boot=500)
    got = dict(zip(c["n_services"], c["verdict"], strict=True))
    assert got[100] == "no significant difference"
    assert got[1000] == "1.8x slower"


def test_describe_ratio_words():
    assert analysis.describe_ratio(1.8, True) == "1.8x slower"
    assert analysis.describe_ratio(1 / 1.3, True) == "1.3x faster"
    assert analysis.describe_ratio(1.23, True) == "1.2x slower"
    assert analysis.describe_ratio(1.04, True) == "1.04x slower"
    assert analysis.describe_ratio(2.0, False) == "no significant difference"
    assert analysis.describe_ratio(1.5, True, "load_achieved_rps", "rps") == "1.5x higher"


def test_compare_modes_within_kernel_only():
    rng = np.random.default_rng(9)
    rows = {}
    for mode, f in (("iptables", 3.0), ("nftables", 1.0)):
        rows[(mode, 10000, 1)] = f * rng.lognormal(np.log(100), 0.1, 200)
    host = frame(rows, kernel="host-6.18")
    uml = frame(
        {
            ("iptables", 10000, 1): rng.lognormal(np.log(100), 0.1, 200),
            ("ipvs", 10000, 1): rng.lognormal(np.log(100), 0.1, 200),
        },
        kernel="uml-6.1",
    )
    c = analysis.compare_modes(pd.concat([host, uml]), "iptables", n_services=-1, n_boot=300)
    got = {(k, m): v for k, m, v in zip(c["kernel"], c["mode"], c["verdict"], strict=True)}
    assert got == {("host-6.18", "nftables"): "3.0x faster", ("uml-6.1", "ipvs"): "no significant difference"}


def test_data_quality_unstable_and_points():
    rng = np.random.default_rng(2)
    df = frame(
        {
            ("ipvs", 100, 1): 100 * rng.lognormal(0, 0.01, 200),
            ("ipvs", 100, 2): 150 * rng.lognormal(0, 0.01, 200),
            ("ipvs", 1000, 1): 100 * rng.lognormal(0, 0.01, 200),
            ("ipvs", 1000, 2): 101 * rng.lognormal(0, 0.01, 200),
        }
    )
    points = pd.DataFrame(
        [
            {
                "kernel": "uml",
                "mode": "ipvs",
                "n_services": 1000,
                "rep": 3,
                "status": "failed",
                "error": "boom",
                "saturated": False,
                "saturated_detail": "",
            },
            {
                "kernel": "uml",
                "mode": "ipvs",
                "n_services": 100,
                "rep": 1,
                "status": "ok",
                "error": "",
                "saturated": True,
                "saturated_detail": "{}",
            },
        ]
    )
    dq = analysis.data_quality(df, points)
    unstable = dq[dq["kind"] == "unstable"]
    assert list(unstable["n_services"]) == [100]
    assert set(dq["kind"]) >= {"failed", "saturated", "unstable"}
    thin = analysis.data_quality(frame({("ipvs", 100, 1): np.ones(5), ("ipvs", 100, 2): np.ones(5)}))
    assert "few_samples" in set(thin["kind"])


def test_large_fixed_cost_with_significant_per_service_cost_is_not_flat():
    """A 300 us floor plus 30 us per 1,000 Services (the iptables 'last' Service): the log-log
    slope is small and uncertain, but the per-Service cost is plainly there."""
    from harness.analysis import FLAT, fit_series

    rng = np.random.default_rng(3)
    n = np.repeat([1000, 2000, 5000, 10000, 20000], 2)
    y = 300 + 0.03 * n + rng.normal(0, 15, len(n))
    f = fit_series(n, y, "us")
    assert f.verdict != FLAT, f
    assert f.per_1k_lo > 0
