"""Statistics over raw samples: quantiles, repetition bands, scaling fits, run comparison, data quality.

Everything is computed from the raw sample table (harness.results.load); nothing is taken
from the load generator's own summaries. Timed-out samples stay in, at their timeout value,
and are counted, so tails are not biased by dropping them.

Conventions
- A *point* is one (run, kernel, mode, Service count, repetition); per-point statistics are
  further split by metric and tags (position, keepalive, change, path).
- Scaling fits and bands use one observation per repetition (the per-rep statistic, p50 by
  default), not raw samples: repetitions are the independent unit, so the CIs are honest.
- Mode comparisons are only made within one kernel (every grouping includes the kernel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

from harness import metrics as _metrics

QUANTILES: dict[str, float] = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}
# Tags that split a series (the sample's "error" tag does not: failed samples stay in their
# series at their timeout value and are counted).
TAG_KEYS = ["position", "keepalive", "change", "path", "sync", "phase"]
# the axes of a sweep beside mode and count: the kube-proxy release and endpoints per Service
# (constant in most runs; a version sweep varies them and they split series like the mode does)
VARIANT_KEYS = ["kube_proxy_version", "endpoints"]
SERIES_KEYS = ["kernel", "mode", *VARIANT_KEYS, "metric", "unit"] + TAG_KEYS  # one curve vs Service count
POINT_KEYS = ["run_id", "kernel", "mode", *VARIANT_KEYS, "n_services", "rep", "metric", "unit"] + TAG_KEYS
POOLED_KEYS = ["kernel", "mode", *VARIANT_KEYS, "n_services", "metric", "unit"] + TAG_KEYS

TIME_UNITS = _metrics.TIME_UNITS
HIGHER_IS_BETTER = set(_metrics.names(higher_is_better=True))
# Samples below which a point's distribution is too thin to trust (pyperf warns on too few values);
# declared per metric in harness.metrics.
MIN_SAMPLES = _metrics.min_samples()
MIN_SAMPLES_DEFAULT = 1


def _unit(metric: str, recorded: str = "") -> str:
    """A metric's unit from the registry; the recorded one only for names it does not know."""
    return _metrics.unit(metric, recorded)


LINEAR = "grows linearly with the number of Services"
SUPERLINEAR = "grows faster than linearly"
SUBLINEAR = "grows sub-linearly"
FLAT = "flat within noise"
SHRINKS = "shrinks"
INSUFFICIENT = "insufficient data"
NOT_ENOUGH = "not enough repetitions"


def _present(df: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k in df.columns]


def _groupby(df: pd.DataFrame, keys: Sequence[str]):
    return df.groupby(list(keys), observed=True, sort=True, dropna=False)


def quantiles(df: pd.DataFrame, by: Sequence[str] = POINT_KEYS) -> pd.DataFrame:
    """p50/p90/p99/p999, mean, std, min, max, count and timed-out count per group of `by`.

    Timed-out rows are included at their recorded (timeout) value and counted in `timed_out`.
    Quantiles use linear interpolation between order statistics (numpy's default).
    """
    keys = _present(df, by)
    cols = keys + ["count", "timed_out", "mean", "std", "min", "max"] + list(QUANTILES)
    d = df[df["value"].notna()] if len(df) else df
    if d.empty:
        return pd.DataFrame(columns=cols)
    if "error" in d.columns:
        d = d.assign(_err=(d["error"].astype(str) != "") & ~d["timed_out"])
    g = _groupby(d, keys)
    out = g["value"].agg(["count", "mean", "std", "min", "max"])
    out.insert(1, "timed_out", g["timed_out"].sum().astype("int64"))
    if "_err" in d.columns:  # failed but not timed out (refused, HTTP error ...): counted too
        out.insert(2, "errors", g["_err"].sum().astype("int64"))
    for name, q in QUANTILES.items():
        out[name] = g["value"].quantile(q)
    out = out.reset_index()
    out["count"] = out["count"].astype("int64")
    for c in keys:
        out[c] = out[c].astype("int64") if c in ("n_services", "rep") else out[c].astype(str)
    return out[cols + (["errors"] if "errors" in out.columns else [])]


def point_quantiles(df: pd.DataFrame) -> pd.DataFrame:
    """Quantiles per point (run, kernel, mode, N, rep) x metric x tags."""
    return quantiles(df, POINT_KEYS)


def pooled_quantiles(df: pd.DataFrame) -> pd.DataFrame:
    """Quantiles per (kernel, mode, N) x metric x tags, all repetitions pooled (for tables)."""
    out = quantiles(df, POOLED_KEYS)
    if not out.empty:
        d = df.assign(_rk=df["run_id"].astype(str) + ":" + df["rep"].astype(str))
        reps = _groupby(d, _present(d, POOLED_KEYS))["_rk"].nunique().reset_index(name="reps")
        for c in reps.columns[:-1]:
            reps[c] = reps[c].astype("int64") if c == "n_services" else reps[c].astype(str)
        out = out.merge(reps, on=_present(out, POOLED_KEYS), how="left")
    return out


def bands(df_or_q: pd.DataFrame, stat: str = "p50", how: str = "minmax", level: float = 0.95) -> pd.DataFrame:
    """Across repetitions: centre (median of per-rep `stat`) and a band per (kernel, mode, N, metric, tags).

    how="minmax": min and max of the per-rep values; how="ci": t confidence interval of their mean
    (centre is then the mean). Accepts raw samples or point_quantiles() output.
    """
    q = df_or_q if stat in df_or_q.columns and "value" not in df_or_q.columns else point_quantiles(df_or_q)
    keys = _present(q, POOLED_KEYS)
    cols = keys + ["center", "lo", "hi", "n_reps"]
    if q.empty:
        return pd.DataFrame(columns=cols)
    recs = []
    for k, g in q.groupby(keys, sort=True, dropna=False):
        v = g[stat].dropna().to_numpy(float)
        n = len(v)
        if n == 0:
            continue
        if how == "ci":
            c = float(v.mean())
            if n > 1:
                h = float(_st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
                lo, hi = c - h, c + h
            else:
                lo = hi = c
        elif how == "minmax":
            c, lo, hi = float(np.median(v)), float(v.min()), float(v.max())
        else:
            raise ValueError(f"bands(how={how!r}): expected 'minmax' or 'ci'")
        recs.append({**dict(zip(keys, k, strict=True)), "center": c, "lo": lo, "hi": hi, "n_reps": n})
    return pd.DataFrame(recs, columns=cols)


# --------------------------------------------------------------------------------------------
# Scaling fits


@dataclass(frozen=True)
class Fit:
    n_obs: int
    n_counts: int
    slope: float  # log-log exponent
    slope_lo: float
    slope_hi: float
    per_1k: float  # marginal cost per 1,000 Services, in the metric's unit
    per_1k_lo: float
    per_1k_hi: float
    per_1k_p: float
    intercept: float  # linear fit, value at N=0 (same unit as per_1k)
    rel_change: float  # fitted change across the measured range, relative to the smallest-N value
    verdict: str


def _ols(x: np.ndarray, y: np.ndarray, level: float) -> tuple[float, float, float, float, float, float]:
    """slope, lo, hi, intercept, p-value of the slope, SSE."""
    n = len(x)
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if n < 2 or sxx == 0:
        return (math.nan,) * 6
    b = float(((x - xm) * (y - ym)).sum() / sxx)
    a = float(ym - b * xm)
    resid = y - (a + b * x)
    sse = float((resid**2).sum())
    if n < 3:
        return b, -math.inf, math.inf, a, math.nan, sse
    se = math.sqrt(sse / (n - 2) / sxx)
    if se == 0:
        return b, b, b, a, 0.0 if b != 0 else 1.0, sse
    t = _st.t.ppf(0.5 + level / 2, n - 2)
    p = float(2 * _st.t.sf(abs(b / se), n - 2))
    return b, b - t * se, b + t * se, a, p, sse


def verdict_for(
    slope_lo: float,
    slope: float,
    slope_hi: float,
    m_lo: float,
    m_hi: float,
    rel_change: float,
    linear_beats_log: bool | None,
    *,
    min_effect: float = 0.05,
    tol: float = 0.1,
) -> str:
    """Plain words for a scaling fit.

    - shrinks: slope and marginal cost both significantly < 0;
    - flat within noise: the marginal cost per 1,000 Services is not significantly different
      from 0 (its CI includes 0), or the fitted change over the measured range is below
      `min_effect` (5%). The straight-line cost decides, not the log-log slope: a large fixed
      cost (a connect's floor) makes the log-log slope's CI wide even where the per-Service cost
      is plainly significant;
    - grows faster than linearly: slope CI entirely above 1 + tol;
    - grows linearly: slope CI includes ~1, or slope > ~0.5, or (3+ Service counts) the data fit
      a straight line in N better than a straight line in log N (a fixed base cost plus a linear
      per-Service cost has a log-log slope well below 1);
    - grows sub-linearly: significant growth otherwise.
    """
    if any(math.isnan(v) for v in (m_lo, m_hi)) or math.isinf(m_lo):
        return INSUFFICIENT
    if math.isnan(slope) or math.isinf(slope_lo):  # zeros or negatives: no log-log fit, marginal cost only
        if m_lo <= 0 <= m_hi or abs(rel_change) < min_effect:
            return FLAT
        return LINEAR if m_lo > 0 else SHRINKS
    if slope_hi < 0 and m_hi < 0:
        return SHRINKS
    if m_lo <= 0 <= m_hi or abs(rel_change) < min_effect:
        return FLAT
    if m_hi < 0 or slope_hi < 0:
        return SHRINKS
    if slope_lo > 1 + tol:
        return SUPERLINEAR
    if (slope_lo <= 1 + tol and slope_hi >= 1 - tol) or slope > 0.5 or linear_beats_log:
        return LINEAR
    return SUBLINEAR


def fit_series(
    n: Sequence[float], y: Sequence[float], unit: str = "", *, level: float = 0.95, min_effect: float = 0.05
) -> Fit:
    """Fit one series: y (per-rep statistic) against Service count n. Costs (per_1k, intercept)
    come out in y's own unit; `unit` names it for the caller and does not rescale anything."""
    x = np.asarray(n, float)
    ya = np.asarray(y, float)
    ok = ~np.isnan(ya) & (x > 0)
    x, yu = x[ok], ya[ok]
    n_counts = len(np.unique(x))
    pos = yu > 0
    if n_counts < 2 or len(x) < 3:
        nan = math.nan
        return Fit(len(x), n_counts, nan, nan, nan, nan, nan, nan, nan, nan, nan, INSUFFICIENT)
    s, s_lo, s_hi, _, _, _ = (
        _ols(np.log(x[pos]), np.log(yu[pos]), level) if pos.sum() >= 3 else (math.nan,) * 6
    )
    b, b_lo, b_hi, a, p, sse_lin = _ols(x / 1000.0, yu, level)
    _, _, _, _, _, sse_log = _ols(np.log(x), yu, level)
    linear_beats_log = (sse_lin <= sse_log) if n_counts >= 3 else None
    base = a + b * x.min() / 1000.0
    rel = (b * (x.max() - x.min()) / 1000.0) / abs(base) if base else math.inf
    v = verdict_for(s_lo, s, s_hi, b_lo, b_hi, rel, linear_beats_log, min_effect=min_effect)
    return Fit(len(x), n_counts, s, s_lo, s_hi, b, b_lo, b_hi, p, a, rel, v)


def scaling_fits(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    stat: str = "p50",
    *,
    level: float = 0.95,
    min_effect: float = 0.05,
) -> pd.DataFrame:
    """Per (kernel, mode, metric, tags): log-log slope with CI, marginal cost per 1,000 Services
    with CI (in the metric's registered unit: per_1k_unit), and a plain-words verdict. One
    observation per repetition."""
    q = point_quantiles(df if metrics is None else df[df["metric"].isin(list(metrics))])
    keys = _present(q, SERIES_KEYS)
    fields = list(Fit.__dataclass_fields__)
    cols = keys + fields + ["per_1k_unit", "stat"]
    if q.empty:
        return pd.DataFrame(columns=cols)
    recs = []
    for k, g in q.groupby(keys, sort=True, dropna=False):
        rec = dict(zip(keys, k, strict=True))
        f = fit_series(g["n_services"].to_numpy(), g[stat].to_numpy(), level=level, min_effect=min_effect)
        unit = _unit(str(rec["metric"]), str(rec.get("unit", "")))
        recs.append({**rec, **f.__dict__, "per_1k_unit": unit, "stat": stat})
    return pd.DataFrame(recs, columns=cols)


# --------------------------------------------------------------------------------------------
# Comparisons


def _fmt_ratio(x: float) -> str:
    """1.83 -> "1.8x", 2.0 -> "2.0x", 1.04 -> "1.04x" (two decimals only near 1), 12.4 -> "12x"."""
    if x < 1.1:
        return f"{x:.2f}x"
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


def describe_ratio(ratio: float, significant: bool, metric: str = "", unit: str = "us") -> str:
    """ "1.8x slower" / "1.3x faster" / "no significant difference" (b relative to a)."""
    if not significant or not np.isfinite(ratio) or ratio <= 0:
        return "no significant difference"
    if unit in TIME_UNITS:
        return f"{_fmt_ratio(ratio)} slower" if ratio > 1 else f"{_fmt_ratio(1 / ratio)} faster"
    word = ("higher", "lower")
    return f"{_fmt_ratio(ratio)} {word[0]}" if ratio > 1 else f"{_fmt_ratio(1 / ratio)} {word[1]}"


def _boot_medians(
    a: np.ndarray, b: np.ndarray, n_boot: int, level: float, rng: np.random.Generator, max_n: int = 4000
) -> tuple[float, float, float, float]:
    """Bootstrap CIs of the ratio (b/a) and the difference (b-a) of medians: (r_lo, r_hi, d_lo, d_hi)."""
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    ratios, diffs = [], []
    chunk = max(1, min(n_boot, 2_000_000 // max(len(a), len(b), 1)))
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        ia = rng.integers(0, len(a), size=(k, min(len(a), max_n)))
        ib = rng.integers(0, len(b), size=(k, min(len(b), max_n)))
        ma, mb = np.median(a[ia], axis=1), np.median(b[ib], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(mb / ma)
        diffs.append(mb - ma)
        done += k
    r = np.concatenate(ratios)
    r = r[np.isfinite(r)]
    d = np.concatenate(diffs)
    d_lo, d_hi = float(np.percentile(d, lo_q)), float(np.percentile(d, hi_q))
    if not len(r):
        return math.nan, math.nan, d_lo, d_hi
    return float(np.percentile(r, lo_q)), float(np.percentile(r, hi_q)), d_lo, d_hi


def _boot_median_ratio(
    a: np.ndarray, b: np.ndarray, n_boot: int, level: float, rng: np.random.Generator, max_n: int = 4000
) -> tuple[float, float]:
    return _boot_medians(a, b, n_boot, level, rng, max_n)[:2]


# The one decision rule, used by the report, the notebook and `kpbench compare` alike.
DECISION_RULE = (
    "different when the bootstrap {level:.0%} CI of the ratio of medians (mode / baseline, or "
    "run B / run A; repetitions pooled) excludes 1 and the ratio differs from 1 by at least "
    '{min_effect:.0%}; fewer than {min_n} samples on either side is "not enough repetitions"'
)
MIN_COMPARE_SAMPLES = 2


def decision_rule(level: float = 0.95, min_effect: float = 0.02) -> str:
    """The comparison rule in words (the report states it once)."""
    return DECISION_RULE.format(level=level, min_effect=min_effect, min_n=MIN_COMPARE_SAMPLES)


def compare_samples(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    alpha: float | None = None,
    min_effect: float = 0.02,
    seed: int = 0,
    metric: str = "",
    unit: str = "us",
) -> dict:
    """b relative to a: ratio and difference of medians with bootstrap CIs, and a verdict.

    One rule decides (decision_rule()): significant when the `level` bootstrap CI of the ratio of
    medians excludes 1 and the ratio differs from 1 by at least `min_effect` (2%: smaller
    differences are not worth a headline). `alpha`, if given, sets level = 1 - alpha. The
    Mann-Whitney U p-value is kept as a column for reference only; it never changes the verdict.
    """
    if alpha is not None:
        level = 1 - alpha
    xa = np.asarray(a, float)
    xa = xa[~np.isnan(xa)]
    xb = np.asarray(b, float)
    xb = xb[~np.isnan(xb)]
    out = {
        "n_a": len(xa),
        "n_b": len(xb),
        "median_a": math.nan,
        "median_b": math.nan,
        "ratio": math.nan,
        "ci_lo": math.nan,
        "ci_hi": math.nan,
        "diff": math.nan,
        "diff_lo": math.nan,
        "diff_hi": math.nan,
        "p_value": math.nan,
        "significant": False,
        "enough": False,
        "verdict": "no significant difference",
    }
    if len(xa) and len(xb):  # the medians are stated even when too few to decide on
        ma, mb = float(np.median(xa)), float(np.median(xb))
        out.update(median_a=ma, median_b=mb, ratio=mb / ma if ma else math.nan, diff=mb - ma)
    if len(xa) < MIN_COMPARE_SAMPLES or len(xb) < MIN_COMPARE_SAMPLES:
        out["verdict"] = NOT_ENOUGH
        return out
    ma, mb = float(np.median(xa)), float(np.median(xb))
    ratio = mb / ma if ma else math.nan
    lo, hi, d_lo, d_hi = _boot_medians(xa, xb, n_boot, level, np.random.default_rng(seed))
    try:
        p = float(_st.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    except ValueError:  # all values identical
        p = 1.0
    sig = bool(np.isfinite(lo) and (lo > 1 or hi < 1) and abs(ratio - 1) >= min_effect)
    out.update(
        median_a=ma,
        median_b=mb,
        ratio=ratio,
        ci_lo=lo,
        ci_hi=hi,
        diff=mb - ma,
        diff_lo=d_lo,
        diff_hi=d_hi,
        p_value=p,
        significant=sig,
        enough=True,
        verdict=describe_ratio(ratio, sig, metric, unit),
    )
    return out


COMPARE_KEYS = ["kernel", "mode", *VARIANT_KEYS, "n_services", "metric", "unit"] + TAG_KEYS


def _swept(da: pd.DataFrame, db: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """`keys` without the variant keys (release, endpoints) that each run holds one value of:
    two runs of one release each are compared across releases (the version effect); a key
    either run sweeps pairs its points."""
    out = []
    for k in keys:
        if k in VARIANT_KEYS and k in da and k in db and da[k].nunique() <= 1 and db[k].nunique() <= 1:
            continue
        out.append(k)
    return out


def compare(
    run_a,
    run_b,
    *,
    metrics: Sequence[str] | None = None,
    keys: Sequence[str] = COMPARE_KEYS,
    n_boot: int = 2000,
    level: float = 0.95,
    alpha: float | None = None,
    min_effect: float = 0.02,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare run B with run A per metric and point (kernel, mode, N, tags; repetitions pooled).

    `run_a`/`run_b` are run folders (their metadata must match on schema_version, target and
    kernels: results.MUST_MATCH_COMPARE) or sample DataFrames. Returns one row per point present
    in both, with medians, ratio b/a and difference b-a with bootstrap CIs and a verdict by
    decision_rule() ("1.8x slower" = B's median is 1.8 times A's).
    """
    from harness import results

    if not isinstance(run_a, pd.DataFrame) or not isinstance(run_b, pd.DataFrame):
        metas = [results.load_metadata(r) for r in (run_a, run_b) if not isinstance(r, pd.DataFrame)]
        if len(metas) == 2:
            results.check_comparable(metas, results.MUST_MATCH_COMPARE, warn_keys=(), what="compare")
    da = run_a if isinstance(run_a, pd.DataFrame) else results.load(run_a)
    db = run_b if isinstance(run_b, pd.DataFrame) else results.load(run_b)
    if metrics is not None:
        da, db = da[da["metric"].isin(list(metrics))], db[db["metric"].isin(list(metrics))]
    return _compare_frames(
        da,
        db,
        _swept(da, db, _present(da, keys)),
        n_boot=n_boot,
        level=level,
        alpha=alpha,
        min_effect=min_effect,
        seed=seed,
    )


def _compare_frames(da: pd.DataFrame, db: pd.DataFrame, keys: list[str], **kw) -> pd.DataFrame:
    cols = keys + [
        "n_a",
        "n_b",
        "median_a",
        "median_b",
        "ratio",
        "ci_lo",
        "ci_hi",
        "diff",
        "diff_lo",
        "diff_hi",
        "p_value",
        "significant",
        "enough",
        "verdict",
    ]
    ga = {(k if isinstance(k, tuple) else (k,)): g["value"].to_numpy(float) for k, g in _groupby(da, keys)}
    gb = {(k if isinstance(k, tuple) else (k,)): g["value"].to_numpy(float) for k, g in _groupby(db, keys)}
    recs = []
    for k in sorted(set(ga) & set(gb), key=lambda t: tuple(str(x) for x in t)):
        rec = dict(zip(keys, k, strict=True))
        metric = str(rec.get("metric", ""))
        recs.append(
            {
                **rec,
                **compare_samples(
                    ga[k], gb[k], metric=metric, unit=_unit(metric, str(rec.get("unit", ""))), **kw
                ),
            }
        )
    out = pd.DataFrame(recs, columns=cols)
    if "n_services" in out:
        out["n_services"] = out["n_services"].astype("int64")
    return out


def compare_modes(
    df: pd.DataFrame,
    baseline: str = "iptables",
    *,
    metrics: Sequence[str] | None = None,
    n_services: int | None = None,
    **kw,
) -> pd.DataFrame:
    """Each mode against `baseline` within each kernel (never across kernels), per N and tags.

    `n_services=None` compares at every count; pass a count (or -1 for each kernel's largest).
    """
    if metrics is not None:
        df = df[df["metric"].isin(list(metrics))]
    keys = ["kernel", *VARIANT_KEYS, "n_services", "metric", "unit"] + TAG_KEYS
    frames = []
    for _kernel, dk in _groupby(df, ["kernel"]):
        if n_services is not None:
            n = int(dk["n_services"].max()) if n_services == -1 else n_services
            dk = dk[dk["n_services"] == n]
        base = dk[dk["mode"] == baseline]
        if base.empty:
            continue
        for mode in sorted(set(map(str, dk["mode"].unique())) - {baseline}):
            c = _compare_frames(base, dk[dk["mode"] == mode], _present(dk, keys), **kw)
            c.insert(1, "mode", mode)
            c.insert(2, "baseline", baseline)
            frames.append(c)
    if not frames:
        return pd.DataFrame(columns=["kernel", "mode", "baseline"] + keys[1:])
    return pd.concat(frames, ignore_index=True)


def releases(df: pd.DataFrame) -> list[str]:
    """The kube-proxy releases in the data, oldest first."""
    if "kube_proxy_version" not in df or df.empty:
        return []
    vs = {str(v) for v in df["kube_proxy_version"].unique() if str(v)}
    return sorted(vs, key=_release_key)


def _release_key(v: str) -> tuple:
    try:
        return tuple(int(x) for x in v.lstrip("v").split("."))
    except ValueError:
        return (0, v)


def compare_releases(
    df: pd.DataFrame,
    baseline: str | None = None,
    *,
    metrics: Sequence[str] | None = None,
    n_services: int | None = None,
    **kw,
) -> pd.DataFrame:
    """Each kube-proxy release against `baseline` (default: the oldest in the data) within each
    kernel and mode (never across them), per endpoints per Service, N and tags: the version
    effect, with the statistics of compare_modes(). `n_services=-1`: each kernel's largest count."""
    if metrics is not None:
        df = df[df["metric"].isin(list(metrics))]
    rels = releases(df)
    baseline = baseline or (rels[0] if rels else None)
    keys = ["kernel", "mode", "endpoints", "n_services", "metric", "unit"] + TAG_KEYS
    frames = []
    for _kernel, dk in _groupby(df, ["kernel"]) if baseline else ():
        if n_services is not None:
            n = int(dk["n_services"].max()) if n_services == -1 else n_services
            dk = dk[dk["n_services"] == n]
        base = dk[dk["kube_proxy_version"] == baseline]
        if base.empty:
            continue
        for rel in [r for r in rels if r != baseline]:
            c = _compare_frames(base, dk[dk["kube_proxy_version"] == rel], _present(dk, keys), **kw)
            c.insert(2, "kube_proxy_version", rel)
            c.insert(3, "baseline", baseline)
            frames.append(c)
    if not frames:
        return pd.DataFrame(columns=["kernel", "mode", "kube_proxy_version", "baseline"] + keys[2:])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Data quality


def data_quality(
    df: pd.DataFrame,
    points: pd.DataFrame | None = None,
    *,
    cv_threshold: float = 0.10,
    min_reps: int = 2,
    min_samples: dict[str, int] | None = None,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Issues worth calling out, one row each: kind, kernel, mode, n_services, rep, metric, tags, detail.

    kinds: failed / invalid / pending (point statuses), saturated (load generator could not keep
    its target rate), timed_out (samples at their timeout value), unstable (std dev of per-rep
    medians >= `cv_threshold` of their mean, pyperf style), few_samples, single_rep.
    """
    min_samples = {**MIN_SAMPLES, **(min_samples or {})}
    cols = ["kind", "kernel", "mode", "n_services", "rep", "metric", "tags", "detail"]
    recs = []
    if points is not None and not points.empty:
        for _, p in points.iterrows():
            base = {
                "kernel": p["kernel"],
                "mode": p["mode"],
                "n_services": int(p["n_services"]),
                "rep": int(p["rep"]),
                "metric": "",
                "tags": "",
            }
            if p["status"] not in ("ok",):
                recs.append({**base, "kind": p["status"], "detail": p["error"] or p["status"]})
            if p["saturated"]:
                recs.append({**base, "kind": "saturated", "detail": p["saturated_detail"]})
    if metrics is not None:
        df = df[df["metric"].isin(list(metrics))]
    q = point_quantiles(df)

    def tags(r) -> str:
        return " ".join(f"{t}={r[t]}" for t in TAG_KEYS if t in r and r[t])

    for _, r in q[q["timed_out"] > 0].iterrows():
        recs.append(
            {
                "kind": "timed_out",
                "kernel": r["kernel"],
                "mode": r["mode"],
                "n_services": r["n_services"],
                "rep": r["rep"],
                "metric": r["metric"],
                "tags": tags(r),
                "detail": f"{r['timed_out']} of {r['count']} samples timed out (kept at the timeout value)",
            }
        )
    keys = _present(q, POOLED_KEYS)
    for k, g in q.groupby(keys, sort=True, dropna=False) if not q.empty else []:
        r = dict(zip(keys, k, strict=True))
        base = {
            "kernel": r["kernel"],
            "mode": r["mode"],
            "n_services": int(r["n_services"]),
            "rep": -1,
            "metric": r["metric"],
            "tags": tags(r),
        }
        med = g["p50"].dropna().to_numpy(float)
        need = min_samples.get(r["metric"], MIN_SAMPLES_DEFAULT)
        thin = g[g["count"] < need]
        if len(thin):
            recs.append(
                {
                    **base,
                    "kind": "few_samples",
                    "detail": f"{int(thin['count'].min())} samples in a repetition (want >= {need})",
                }
            )
        if len(med) < min_reps:
            recs.append(
                {**base, "kind": "single_rep", "detail": f"{len(med)} repetition(s): stability unknown"}
            )
        elif med.mean() != 0:
            cv = med.std(ddof=1) / abs(med.mean())
            if cv >= cv_threshold:
                recs.append(
                    {
                        **base,
                        "kind": "unstable",
                        "detail": f"std dev of per-rep medians is {cv:.0%} of their mean (>= {cv_threshold:.0%})",
                    }
                )
    return pd.DataFrame(recs, columns=cols)
