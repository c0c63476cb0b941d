"""The report's opening: findings written from the data, per kernel at its largest Service count.

- each mode against the baseline (iptables) for the headline metrics of harness.metrics
  (`headline`: first-packet latency, one-change sync, full sync), as ratio and difference of
  medians with bootstrap CIs and a plain sentence, decided by analysis.decision_rule();
- the fitted growth per mode (flat / linear / faster than linear, with the cost per 1,000
  Services in readable units);
- crossovers: the Service count where one mode overtakes another;
- the version effect, when the run swept kube-proxy releases: each release against the oldest,
  per mode and endpoints per Service, with the same statistics as the mode comparison;
- what the run could not measure (failed / invalid / saturated / over-budget points, series
  with too few repetitions).

`summary()` returns plain data (lists of sentences) that the HTML and Markdown templates and the
notebook (`markdown()`) show alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness import analysis, metrics, units

BASELINE = "iptables"
# Who programmed the dataplane whose sync times a row carries (the row's `target`).
PROGRAMMED_BY = {
    "lab": "the lab (the kernel's share only: rules applied directly, no kube-proxy)",
    "local": "the real kube-proxy (local target)",
    "cluster": "the real kube-proxy (existing cluster)",
}
CROSSOVER_MIN_GAP = 0.05  # modes within 5% of each other at a count are not "ahead" there


def programmed_by(targets: Sequence[str]) -> str:
    """Plain words for who programmed the dataplane, from the rows' target values."""
    ts = sorted({str(t) for t in targets if str(t)})
    return "; ".join(PROGRAMMED_BY.get(t, f"target {t}") for t in ts) or "unknown"


def _headline_rows(df: pd.DataFrame, m: metrics.Metric) -> pd.DataFrame:
    d = df[df["metric"] == m.name]
    for tag, value in m.headline_tags:
        if tag in d and (d[tag] == value).any():
            d = d[d[tag] == value]
    return d


def _what(m: metrics.Metric) -> str:
    tags = ", ".join(f"{t}={v}" for t, v in m.headline_tags)
    return f"{m.headline} (`{m.name}`{', ' + tags if tags else ''})"


def too_few_sentence(at: str, m: metrics.Metric, b: str, a: str, r: dict) -> str:
    """A comparison the decision rule cannot make (too few samples on a side): the medians measured,
    if both sides have any, and why nothing is decided."""
    need = f"({r['n_b']} and {r['n_a']} samples; the rule needs {analysis.MIN_COMPARE_SAMPLES})"
    if r["n_a"] and r["n_b"] and np.isfinite(r["median_a"]) and np.isfinite(r["median_b"]):
        ratio = f" (ratio {r['ratio']:.2f})" if np.isfinite(r["ratio"]) else ""
        q = lambda v: units.quantity(v, m.unit)  # noqa: E731
        return f"{at}: {b} {q(r['median_b'])}, {a} {q(r['median_a'])}{ratio}; not enough repetitions to decide {need}."
    return f"{at}: {b} and {a} could not be compared, not enough repetitions {need}."


def compare_sentence(n: int, m: metrics.Metric, mode: str, base: str, r: dict, level: float = 0.95) -> str:
    """One comparison in words, e.g. "At 50,000 Services a new connection through iptables costs
    1.9x ipvs's (+410 us, 95% CI +380 us to +440 us)"."""
    at = f"At {units.count(n)} Services {m.headline}"
    if not r.get("enough"):
        return too_few_sentence(at, m, mode, base, r)
    ratio = r["ratio"]
    ci = f"{level:.0%} CI"
    if not r["significant"]:
        return (
            f"{at} costs the same through {mode} and {base} within noise (ratio {ratio:.2f}, "
            f"{ci} {r['ci_lo']:.2f} to {r['ci_hi']:.2f})."
        )
    if ratio > 1:
        slow, fast, factor, d, lo, hi = mode, base, ratio, r["diff"], r["diff_lo"], r["diff_hi"]
        f_lo, f_hi = r["ci_lo"], r["ci_hi"]
    else:
        slow, fast, factor, d, lo, hi = base, mode, 1 / ratio, -r["diff"], -r["diff_hi"], -r["diff_lo"]
        f_lo, f_hi = 1 / r["ci_hi"], 1 / r["ci_lo"]
    q = lambda v: units.quantity(v, m.unit, sign=True)  # noqa: E731
    return (
        f"{at} through {slow} costs {analysis._fmt_ratio(factor)} {fast}'s ({q(d)}, {ci} {q(lo)} to {q(hi)}; "
        f"ratio {ci} {_ratio(f_lo)} to {_ratio(f_hi)})."
    )


def release_sentence(
    n: int,
    m: metrics.Metric,
    mode: str,
    release: str,
    base: str,
    r: dict,
    endpoints: str = "",
    level: float = 0.95,
) -> str:
    """The version effect in words, e.g. "At 50,000 Services (1 endpoint per Service),
    nftables: a full sync with v1.37.2 takes 0.02x v1.34.12's (-5.1 s, 95% CI ...; ratio 95% CI ...)"."""
    at = f"At {units.count(n)} Services{endpoints}, {mode}: {m.headline}"
    ci = f"{level:.0%} CI"
    if not r.get("enough"):
        return too_few_sentence(at, m, release, base, r)
    if not r["significant"]:
        return (
            f"{at} is the same with {release} and {base} within noise (ratio {r['ratio']:.2f}, "
            f"{ci} {r['ci_lo']:.2f} to {r['ci_hi']:.2f})."
        )
    q = lambda v: units.quantity(v, m.unit, sign=True)  # noqa: E731
    return (
        f"{at} with {release} takes {_ratio(r['ratio'])} {base}'s ({q(r['diff'])}, {ci} {q(r['diff_lo'])} "
        f"to {q(r['diff_hi'])}; ratio {ci} {_ratio(r['ci_lo'])} to {_ratio(r['ci_hi'])})."
    )


def _variants(d: pd.DataFrame) -> list[tuple[str, int]]:
    """(release, endpoints) pairs in the data: one unless the run swept releases or endpoints."""
    if "kube_proxy_version" not in d or "endpoints" not in d or d.empty:
        return [("", -1)]
    pairs = d[["kube_proxy_version", "endpoints"]].drop_duplicates().itertuples(index=False)
    return sorted({(str(r), int(e)) for r, e in pairs}, key=lambda p: (analysis._release_key(p[0]), p[1]))


def _eps_words(e: int) -> str:
    return f" ({e} endpoint{'s' if e != 1 else ''} per Service)"


def _variant_label(release: str, e: int, several_rel: bool, several_eps: bool) -> str:
    parts = ([release] if several_rel else []) + (
        [f"{e} endpoint{'s' if e != 1 else ''}"] if several_eps else []
    )
    return f" ({', '.join(parts)})" if parts else ""


def growth_words(fit: pd.Series | dict) -> str:
    """flat / linear / faster than linear (about quadratic) / sub-linear / shrinks, from a fit."""
    v = fit["verdict"]
    if v == analysis.SUPERLINEAR:
        s, lo, hi = fit["slope"], fit["slope_lo"], fit["slope_hi"]
        quad = lo <= 2.0 <= hi or abs(s - 2) < 0.3
        return f"grows {'quadratically' if quad else 'faster than linearly'} (log-log slope {s:.2f})"
    return {
        analysis.LINEAR: "grows linearly",
        analysis.FLAT: "is flat within noise",
        analysis.SUBLINEAR: "grows sub-linearly",
        analysis.SHRINKS: "shrinks",
    }.get(v, v)


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def growth_sentence(m: metrics.Metric, mode: str, fit: pd.Series | dict) -> str:
    q = lambda v: units.quantity(v, m.unit, sign=True)  # noqa: E731
    cost = f"{q(fit['per_1k'])} per 1,000 Services (95% CI {q(fit['per_1k_lo'])} to {q(fit['per_1k_hi'])})"
    return f"{mode}: {m.headline} {growth_words(fit)}, {cost}."


def crossovers(medians: pd.DataFrame, m: metrics.Metric) -> list[str]:
    """Counts where one mode overtakes another: `medians` has mode, n_services, median."""
    out = []
    modes = sorted(map(str, medians["mode"].unique()))
    wide = medians.pivot_table(
        index="n_services", columns="mode", values="median", observed=True
    ).sort_index()
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            pair = wide[[a, b]].dropna() if a in wide and b in wide else pd.DataFrame()
            if len(pair) < 2:
                continue
            rel = (pair[a] / pair[b]).to_numpy(float)
            ns = pair.index.to_numpy()
            ahead = np.where(rel > 1 + CROSSOVER_MIN_GAP, 1, np.where(rel < 1 - CROSSOVER_MIN_GAP, -1, 0))
            last = 0
            last_n = None
            for n, s in zip(ns, ahead, strict=True):
                if s == 0:
                    continue
                if last and s != last and last_n is not None:  # last_n is set whenever last is
                    faster, slower = (a, b) if s < 0 else (b, a)
                    at = _crossing(last_n, rel[list(ns).index(last_n)], n, rel[list(ns).index(n)])
                    out.append(
                        f"{m.headline}: {faster} overtakes {slower} between {units.count(last_n)} and "
                        f"{units.count(n)} Services (medians cross near {units.count(at)}, "
                        f"interpolated on log scales)."
                    )
                last, last_n = s, n
    return out


def _crossing(n0: float, r0: float, n1: float, r1: float) -> float:
    """Where log(ratio) crosses 0 between (n0, r0) and (n1, r1), interpolated in log N, rounded to
    two significant digits (the measured counts bound it; more digits would be invented)."""
    l0, l1 = np.log(r0), np.log(r1)
    f = l0 / (l0 - l1) if l0 != l1 else 0.5
    n = float(np.exp(np.log(n0) + f * (np.log(n1) - np.log(n0))))
    return float(f"{n:.2g}")


def version_effect(
    dk: pd.DataFrame, heads: Sequence[metrics.Metric], n_max: int, *, level: float = 0.95, n_boot: int = 1000
) -> list[str]:
    """Each release against the oldest in `dk` (one kernel of one run) at `n_max`, per headline
    metric, mode and endpoints per Service; [] when the data holds one release."""
    rels = analysis.releases(dk)
    if len(rels) < 2:
        return []
    several_eps = dk["endpoints"].nunique() > 1
    out = []
    for m in heads:
        d = _headline_rows(dk, m)
        d = d[d["n_services"] == n_max]
        if d.empty:
            continue
        c = analysis.compare_releases(d, rels[0], metrics=[m.name], n_boot=n_boot, level=level)
        for _, r in c.iterrows():
            eps = _eps_words(int(r["endpoints"])) if several_eps or int(r["endpoints"]) != 1 else ""
            out.append(
                release_sentence(
                    n_max, m, str(r["mode"]), str(r["kube_proxy_version"]), rels[0], r, eps, level
                )
            )
    return out


def _medians(d: pd.DataFrame) -> pd.DataFrame:
    g = d.groupby(["mode", "n_services"], observed=True)["value"].median()
    return g.reset_index(name="median")


def unmeasured(df: pd.DataFrame, points: pd.DataFrame | None) -> list[str]:
    """Sentences for points the run could not measure (or measured under a cloud)."""
    out = []
    if points is not None and not points.empty:
        for status, g in points[points["status"] != "ok"].groupby("status", sort=True):
            names = ", ".join(
                f"{r['kernel']}/{r['mode']} at {units.count(r['n_services'])} rep {r['rep']}"
                + (f" ({r['error'][:80]})" if r["error"] else "")
                for _, r in g.iterrows()
            )
            out.append(f"{len(g)} point(s) {status.replace('_', ' ')}: {names}.")
        sat = points[points["saturated"].astype(bool)]
        if len(sat):
            names = ", ".join(
                f"{r['kernel']}/{r['mode']} at {units.count(r['n_services'])} rep {r['rep']}"
                for _, r in sat.iterrows()
            )
            out.append(
                f"{len(sat)} point(s) saturated (the load generator could not keep its rate: their "
                f"request latencies are the generator's as much as the dataplane's): {names}."
            )
        over = [
            r for _, r in points.iterrows() if isinstance(r["flags"], dict) and r["flags"].get("over_budget")
        ]
        if over:
            out.append(
                f"{len(over)} point(s) over budget: "
                + ", ".join(f"{r['kernel']}/{r['mode']} at {units.count(r['n_services'])}" for r in over)
                + "."
            )
    return out


def generator_lateness(df: pd.DataFrame) -> str | None:
    """How late the load generator itself started requests, in words: request_lateness_us, or for
    runs recorded before it, request_corrected_us - request_us of the same request (which is
    exactly start - intended). None without request rows."""
    u = metrics.unit("request_lateness_us")
    d = df[df["metric"] == "request_lateness_us"]["value"].dropna()
    derived = False
    if d.empty:
        keys = ["point_id", "keepalive", "seq"]
        req = df[(df["metric"] == "request_us") & ~df["timed_out"]]
        cor = df[(df["metric"] == "request_corrected_us") & ~df["timed_out"]]
        if req.empty or cor.empty:
            return None
        m = req[keys + ["value"]].merge(cor[keys + ["value"]], on=keys, suffixes=("_r", "_c"))
        d = (m["value_c"] - m["value_r"]).clip(lower=0)
        derived = True
        if d.empty:
            return None
    p50, p99 = float(d.quantile(0.5)), float(d.quantile(0.99))
    text = (
        f"The load generator started requests {units.quantity(p50, u)} after their intended start at "
        f"the median ({units.quantity(p99, u)} at p99): request_corrected_us includes this generator "
        "lateness, request_us does not."
    )
    if derived:
        text += (
            " (Derived as request_corrected_us - request_us: this run predates request_lateness_us and "
            "the generator's fix that sleeps to 2 ms before each start and yield-spins the rest.)"
        )
    return text


def summary(
    df: pd.DataFrame,
    points: pd.DataFrame | None = None,
    baseline: str = BASELINE,
    *,
    level: float = 0.95,
    n_boot: int = 1000,
) -> dict:
    """Findings as data: {"rule", "kernels": [{kernel, n_services, programmed_by, compare, growth,
    crossovers}], "unmeasured", "lateness"}; every entry a sentence."""
    out: dict[str, Any] = {
        "rule": analysis.decision_rule(level),
        "baseline": baseline,
        "kernels": [],
        "unmeasured": unmeasured(df, points),
        "lateness": generator_lateness(df),
    }
    heads = [m for m in metrics.headlines() if (df["metric"] == m.name).any()]
    runs = sorted(map(str, df["run_id"].unique())) if len(df) else []
    groups = [(r, k) for r in runs for k in sorted(map(str, df[df["run_id"] == r]["kernel"].unique()))]
    for run, kernel in groups:
        # one run: per kernel; several runs laid side by side: per run and kernel, never pooled
        dk = df[(df["kernel"] == kernel) & (df["run_id"] == run)]
        label = kernel if len(runs) == 1 else f"{kernel}, run {run}"
        modes = sorted(map(str, dk["mode"].unique()))
        # the largest count every mode of this kernel reached (a point left out, e.g. over budget,
        # must not leave the comparison without its baseline)
        per_mode = [set(dk[dk["mode"] == m]["n_services"].unique()) for m in modes]
        common = set.intersection(*per_mode) if per_mode else set()
        n_max = int(max(common)) if common else int(dk["n_services"].max())
        k: dict[str, Any] = {
            "kernel": label,
            "n_services": n_max,
            "modes": modes,
            "compare": [],
            "growth": [],
            "versions": [],
            "crossovers": [],
            "programmed_by": programmed_by(dk["target"].unique()) if "target" in dk else "unknown",
        }
        unfit: list[str] = []
        variants = _variants(dk)
        several_rel = len({r for r, _ in variants}) > 1
        several_eps = len({e for _, e in variants}) > 1
        for m in heads:
            d_all = _headline_rows(dk, m)
            if d_all.empty:
                continue
            for release, e in variants:  # modes are compared within one release and endpoint count
                d = (
                    d_all
                    if e < 0
                    else d_all[(d_all["kube_proxy_version"] == release) & (d_all["endpoints"] == e)]
                )
                vl = _variant_label(release, e, several_rel, several_eps)
                at_max = d[d["n_services"] == n_max]
                base = at_max[at_max["mode"] == baseline]["value"].to_numpy(float)
                for mode in modes:
                    if mode == baseline or base.size == 0:
                        continue
                    r = analysis.compare_samples(
                        base,
                        at_max[at_max["mode"] == mode]["value"].to_numpy(float),
                        n_boot=n_boot,
                        level=level,
                        metric=m.name,
                        unit=m.unit,
                    )
                    k["compare"].append(
                        compare_sentence(n_max, m, mode, baseline, r, level).rstrip(".") + vl + "."
                    )
                fits = analysis.scaling_fits(d, [m.name], level=level)
                for _, f in fits.iterrows():
                    if f["verdict"] == analysis.INSUFFICIENT:
                        unfit.append(
                            f"{f['mode']}{vl} ({m.headline}: {int(f['n_obs'])} observation(s) at "
                            f"{int(f['n_counts'])} count(s))"
                        )
                    else:
                        k["growth"].append(growth_sentence(m, f"{f['mode']}{vl}", f))
                k["crossovers"] += [c.rstrip(".") + vl + "." for c in crossovers(_medians(d), m)]
        k["versions"] = version_effect(dk, heads, n_max, level=level, n_boot=n_boot)
        if unfit:
            k["growth"].append(
                "Not fitted, not enough repetitions (a fit needs 3 per-repetition values at 2 or "
                "more Service counts): " + "; ".join(unfit) + "."
            )
        if len(modes) > 1 and not (dk["mode"] == baseline).any():
            k["compare"].append(
                f"No {baseline} baseline on this kernel: modes are compared in the tables below."
            )
        out["kernels"].append(k)
    return out


def markdown(s: dict) -> str:
    """The findings as Markdown (the notebook's first output; the report's template does the same)."""
    lines = ["## Findings", ""]
    for k in s["kernels"]:
        lines += [
            f"### Kernel {k['kernel']}: at {units.count(k['n_services'])} Services",
            "",
            f"Sync times programmed by {k['programmed_by']}.",
            "",
        ]
        lines += [f"- {x}" for x in k["compare"]]
        if k.get("versions"):
            lines += ["", "Version effect (each release against the oldest measured):", ""]
            lines += [f"- {x}" for x in k["versions"]]
        if k["growth"]:
            lines += ["", "Growth with the number of Services:", ""] + [f"- {x}" for x in k["growth"]]
        lines += ["", "Crossovers: " + (" ".join(k["crossovers"]) or "none: no mode overtakes another."), ""]
    lines += ["### What this run could not measure", ""]
    lines += [f"- {x}" for x in s["unmeasured"]] or ["- Every planned point was measured."]
    if s["lateness"]:
        lines += ["", s["lateness"]]
    lines += ["", f"Decision rule: {s['rule']}."]
    return "\n".join(lines) + "\n"
