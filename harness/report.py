"""Static report: one self-contained HTML file (inline SVG figures, inline CSS, no external assets)
and a Markdown twin (figures as PNG files beside it), built only from library functions
(harness.results, harness.analysis, harness.plots) so the notebook can reproduce every part.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from harness import analysis, findings, metrics, plots, results, units

TEMPLATES = Path(__file__).resolve().parent / "templates"

FIGURE_TITLES = {
    "hashing_vs_chain": "Hashing versus chain: connect latency vs Service count",
    "connect_latency": "Connect latency (p50, p99) vs Service count",
    "sync_latency": "Programming time: one change and full sync vs Service count",
    "request_cdf": "Request latency CDF at the largest Service count",
    "request_cdf_corrected": "Request latency CDF, corrected for coordinated omission",
    "cpu_usage": "CPU under load vs Service count",
    "iptables_position": "iptables: first vs last rule position",
}

CAVEATS = [
    "Compare modes within one kernel only: every figure and table is split by kernel, and modes "
    "measured on different kernels are not compared with each other.",
    "User-Mode Linux (uml-* kernels) runs the kernel as a user process: absolute latencies are "
    "inflated several-fold; read UML results for trends with the Service count, not absolute values.",
    "Timed-out samples are kept at their timeout value and counted (column 'timed out'); tails "
    "that include them are upper bounds of what clients saw, not dropped samples.",
    "Bands and scaling fits use one value per repetition (the per-repetition p50): with few "
    "repetitions the confidence intervals are wide and verdicts are cautious. Comparisons pool the "
    "repetitions' samples and follow the one decision rule stated under the findings.",
    "Sync times (sync_one_s, sync_full_s) are the dataplane's programming time as the row's target "
    "measured it: on the lab target the harness applies the rules itself (the kernel's share only, "
    "no kube-proxy); on the local and cluster targets the real kube-proxy programmed them.",
    "request_corrected_us counts from each request's intended start; request_lateness_us is the "
    "load generator's own share of that (actual - intended start). A large lateness means the "
    "generator, not the dataplane, ran late.",
    "Saturated points (the load generator could not keep its target rate) measure the load "
    "generator as much as the dataplane. Failed points have no samples; invalid points (validation "
    "failed) keep their samples in the tables. All of them are listed below so they can be discounted.",
]


def fmt(v: Any, digits: int = 3) -> str:
    """Numbers with `digits` significant digits and thousands separators; '' for NaN."""
    if v is None:
        return ""
    if isinstance(v, (bool,)):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return units.significant(x, digits)


def _tags(r: pd.Series | dict) -> str:
    return " ".join(f"{t}={r[t]}" for t in analysis.TAG_KEYS if t in r and r[t] not in ("", None))


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict:
    return {
        "columns": list(columns),
        "rows": [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows],
    }


def environment_info(metas: Sequence[dict]) -> list[dict]:
    out = []
    for m in metas:
        out.append(
            {
                "run_id": m.get("run_id"),
                "dir": m.get("_dir"),
                "status": m.get("status", "?"),
                "started": m.get("started"),
                "ended": m.get("ended"),
                "target": m.get("target"),
                "schema_version": m.get("schema_version"),
                "harness": results.harness_version(m),
                "kernels": results.kernel_labels(m),
                "synthetic": bool(m.get("synthetic")),
                "tools": {str(k): str(v) for k, v in (m.get("tools") or {}).items()},
                "machine": {str(k): str(v) for k, v in (m.get("machine") or {}).items()},
                "scenario": yaml.safe_dump(m.get("scenario") or {}, sort_keys=False).strip(),
            }
        )
    return out


def _present(df: pd.DataFrame, **flags: bool) -> list[str]:
    """Registered metrics with `flags` (e.g. fit=True) that `df` has samples of."""
    have = set(map(str, df["metric"].unique())) if len(df) else set()
    return [m for m in metrics.names(**flags) if m in have]


def _scale(values: Iterable[float], unit: str) -> str | None:
    """One time prefix for a column of values (the median's), so a table reads on one scale."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if unit not in metrics.TIME_UNITS or not v:
        return None
    med = sorted(abs(x) for x in v)[len(v) // 2]
    return units.time_prefix(med * metrics.TIME_UNITS[unit])[0]


def _q(v: Any, unit: str, prefix: str | None = None, sign: bool = False) -> str:
    return units.quantity(v, unit, prefix=prefix, sign=sign)


def _thin_summary(items: Sequence[tuple[str, str, str]]) -> list[str]:
    """(kernel, mode, metric) triples too thin to use, one short line per kernel:
    "host-6.18: connect_us, sync_full_s (12 series; modes iptables, nftables)"."""
    out = []
    for kernel in sorted({k for k, _, _ in items}):
        mine = [(m, x) for k, m, x in items if k == kernel]
        metrics_ = ", ".join(dict.fromkeys(x for _, x in mine))
        modes = ", ".join(sorted({m for m, _ in mine}))
        out.append(f"{kernel}: {metrics_} ({len(mine)} series; modes {modes})")
    return out


def fits_table(df: pd.DataFrame) -> dict:
    """Scaling fits that could be made; the series too thin to fit are named once in `not_enough`."""
    f = analysis.scaling_fits(df, _present(df, fit=True))
    rows, thin = [], []
    for _, r in f.iterrows():
        u = metrics.unit(r["metric"])
        if r["verdict"] == analysis.INSUFFICIENT:
            thin.append((str(r["kernel"]), str(r["mode"]), str(r["metric"])))
            continue
        growth = findings.growth_words(r) if r["verdict"] == analysis.SUPERLINEAR else r["verdict"]
        rows.append(
            [
                r["kernel"],
                r["mode"],
                r["metric"],
                _tags(r),
                growth,
                _q(r["per_1k"], u, sign=True),
                f"{_q(r['per_1k_lo'], u, sign=True)} to {_q(r['per_1k_hi'], u, sign=True)}",
                r["slope"],
                f"{fmt(r['slope_lo'])} to {fmt(r['slope_hi'])}",
                int(r["n_obs"]),
                u,
            ]
        )
    t = _table(
        [
            "kernel",
            "mode",
            "metric",
            "tags",
            "growth",
            "per 1,000 Services",
            "95% CI",
            "log-log slope",
            "95% CI",
            "obs",
            "unit",
        ],
        rows,
    )
    t["not_enough"] = _thin_summary(thin)
    return t


def quantile_tables(df: pd.DataFrame) -> list[dict]:
    table_metrics = metrics.names(table=True)
    q = analysis.pooled_quantiles(df[df["metric"].isin(table_metrics)])
    out = []
    for metric in table_metrics:
        g = q[q["metric"] == metric]
        if g.empty:
            continue
        u = metrics.unit(metric)
        pre = _scale(g["p50"], u)
        rows = [
            [
                r["kernel"],
                r["mode"],
                int(r["n_services"]),
                _tags(r),
                int(r["reps"]),
                int(r["count"]),
                int(r["timed_out"]),
            ]
            + [_q(r[c], u, pre) for c in ("p50", "p90", "p99", "p999", "mean")]
            for _, r in g.iterrows()
        ]
        t = _table(
            [
                "kernel",
                "mode",
                "Services",
                "tags",
                "reps",
                "samples",
                "timed out",
                "p50",
                "p90",
                "p99",
                "p999",
                "mean",
            ],
            rows,
        )
        t["metric"], t["unit"] = metric, u
        out.append(t)
    return out


def _compared(r) -> list:
    """A comparison row's metric, tags, both medians, ratio and difference with their 95% CIs,
    and verdict, each quantity in the metric's unit at one scale."""
    u = metrics.unit(r["metric"])
    pre = _scale([r["median_a"], r["median_b"]], u)
    return [
        r["metric"],
        _tags(r),
        _q(r["median_a"], u, pre),
        _q(r["median_b"], u, pre),
        f"{fmt(r['ratio'])} [{fmt(r['ci_lo'])}, {fmt(r['ci_hi'])}]",
        f"{_q(r['diff'], u, sign=True)} [{_q(r['diff_lo'], u, sign=True)}, {_q(r['diff_hi'], u, sign=True)}]",
        r["verdict"],
    ]


def mode_comparison_table(df: pd.DataFrame, baseline: str = "iptables") -> dict:
    """Each mode against `baseline` at each kernel's largest count, decided by analysis.decision_rule();
    comparisons with too few samples are named once in `not_enough`."""
    c = analysis.compare_modes(df, baseline, metrics=_present(df, compare=True), n_services=-1, n_boot=500)
    rows, thin = [], []
    for _, r in c.iterrows():
        if not r["enough"]:
            thin.append((str(r["kernel"]), str(r["mode"]), str(r["metric"])))
            continue
        rows.append(
            [
                r["kernel"],
                f"{r['mode']} vs {r['baseline']}{_variant(r, df)}",
                int(r["n_services"]),
                *_compared(r),
            ]
        )
    t = _table(
        [
            "kernel",
            "comparison",
            "Services",
            "metric",
            "tags",
            "median (baseline)",
            "median (mode)",
            "ratio [95% CI]",
            "difference [95% CI]",
            "verdict",
        ],
        rows,
    )
    t["not_enough"] = _thin_summary(thin)
    return t


def disruption_table(df: pd.DataFrame) -> dict:
    """Per kernel, mode, Service count and sync kind: the disruption prober's failure rate and longest
    gap during the sync against the baseline before it (rates pooled over repetitions, gaps the
    worst repetition's)."""
    conn, fail, gap = "disrupt_connect_us", "disrupt_failed", "disrupt_gap_ms"
    for m in (conn, fail, gap):
        metrics.get(m)  # registered: the rows' meaning and units come from there
    d = df[df["metric"].isin([conn, fail, gap])]
    rows = []
    if not d.empty:
        keys = ["kernel", "mode", "n_services", "sync"]
        for (k, mode, n, kind), g in d.groupby(keys, observed=True, sort=True):
            cells = []
            for ph in ("before", "during"):
                gp = g[g["phase"] == ph]
                tries = int((gp["metric"] == conn).sum())
                fails = int((gp["metric"] == fail).sum())
                cells += [tries, f"{100 * fails / tries:.2f}" if tries else "-"]
            gaps = {
                ph: g[(g["metric"] == gap) & (g["phase"] == ph)]["value"].max() for ph in ("before", "during")
            }
            ratio = fmt(gaps["during"] / gaps["before"]) if gaps["before"] and gaps["before"] > 0 else "-"
            rows.append(
                [k, mode, int(n), kind, *cells, _q(gaps["before"], "ms"), _q(gaps["during"], "ms"), ratio]
            )
    return _table(
        [
            "kernel",
            "mode",
            "Services",
            "sync",
            "attempts before",
            "failed % before",
            "attempts during",
            "failed % during",
            "longest gap before",
            "longest gap during",
            "gap during / before",
        ],
        rows,
    )


def _variant(r, df: pd.DataFrame) -> str:
    """' (v1.37.2, 2 endpoints)' for a row of a run that swept releases or endpoints, else ''."""
    parts = []
    if "kube_proxy_version" in df and df["kube_proxy_version"].nunique() > 1 and r.get("kube_proxy_version"):
        parts.append(str(r["kube_proxy_version"]))
    if "endpoints" in df and df["endpoints"].nunique() > 1 and "endpoints" in r:
        parts.append(f"{int(r['endpoints'])} endpoints")
    return f" ({', '.join(parts)})" if parts else ""


def version_comparison_table(df: pd.DataFrame) -> dict | None:
    """Each kube-proxy release against the oldest measured, per kernel, mode and endpoints at each
    kernel's largest count (the version effect); None when the data holds one release."""
    rels = analysis.releases(df)
    if len(rels) < 2:
        return None
    c = analysis.compare_releases(df, rels[0], metrics=_present(df, compare=True), n_services=-1, n_boot=500)
    rows, thin = [], []
    for _, r in c.iterrows():
        if not r["enough"]:
            thin.append((str(r["kernel"]), f"{r['mode']} {r['kube_proxy_version']}", str(r["metric"])))
            continue
        rows.append(
            [
                r["kernel"],
                r["mode"],
                f"{r['kube_proxy_version']} vs {r['baseline']}",
                int(r["endpoints"]),
                int(r["n_services"]),
                *_compared(r),
            ]
        )
    t = _table(
        [
            "kernel",
            "mode",
            "comparison",
            "endpoints",
            "Services",
            "metric",
            "tags",
            "median (baseline)",
            "median (release)",
            "ratio [95% CI]",
            "difference [95% CI]",
            "verdict",
        ],
        rows,
    )
    t["not_enough"] = _thin_summary(thin)
    return t


def quality_table(df: pd.DataFrame, points: pd.DataFrame) -> tuple[dict, dict]:
    """(points called out: failed/invalid/pending/saturated, sample issues: unstable/timed out/...)"""
    dq = analysis.data_quality(df, points)
    pts = dq[dq["kind"].isin(["failed", "invalid", "pending", "over_budget", "saturated", "unknown"])]
    rest = dq[~dq.index.isin(pts.index) & (dq["kind"] != "single_rep")]
    p_tab = _table(
        ["kind", "kernel", "mode", "Services", "rep", "detail"],
        [
            [r["kind"], r["kernel"], r["mode"], int(r["n_services"]), int(r["rep"]), r["detail"]]
            for _, r in pts.iterrows()
        ],
    )
    s_tab = _table(
        ["kind", "kernel", "mode", "Services", "rep", "metric", "tags", "detail"],
        [
            [
                r["kind"],
                r["kernel"],
                r["mode"],
                int(r["n_services"]),
                "all" if int(r["rep"]) < 0 else int(r["rep"]),
                r["metric"],
                r["tags"],
                r["detail"],
            ]
            for _, r in rest.iterrows()
        ],
    )
    return p_tab, s_tab


def _checks(v: Any) -> dict[str, Any]:
    """Normalise a validation result to {check: value}."""
    if isinstance(v, dict):
        if isinstance(v.get("checks"), dict):
            return v["checks"]
        if isinstance(v.get("checks"), list):
            v = v["checks"]
        else:
            return {str(k): x for k, x in v.items() if not isinstance(x, (dict, list))}
    if isinstance(v, list):
        return {
            str(c.get("name", i)): c.get("ok", c.get("result"))
            for i, c in enumerate(v)
            if isinstance(c, dict)
        }
    if isinstance(v, bool):
        return {"ok": v}
    return {}


def _cell(x: Any) -> str:
    if x is True:
        return "pass"
    if x is False:
        return "FAIL"
    return "" if x is None else str(x)


def validation_matrix(metas: Sequence[dict], points: pd.DataFrame) -> dict | None:
    """Run-level validation (metadata["validation"]: key -> checks) and per-point validation
    aggregated per (kernel, mode) as passes/total. None when no run recorded any."""
    rows: list[tuple[str, dict[str, str]]] = []
    for m in metas:
        for key, v in (m.get("validation") or {}).items():
            c = _checks(v)
            if c:
                rows.append((str(key), {k: _cell(x) for k, x in c.items()}))
    if points is not None and not points.empty:
        agg: dict[str, dict[str, list[int]]] = {}
        for _, p in points.iterrows():
            c = _checks(p["validation"])
            for k, x in c.items():
                cnt = agg.setdefault(f"points {p['kernel']}/{p['mode']}", {}).setdefault(k, [0, 0])
                cnt[1] += 1
                cnt[0] += x is True or x == "ok" or x == "pass"
        for key, c in sorted(agg.items()):
            rows.append((key, {k: f"{a}/{b} pass" for k, (a, b) in c.items()}))
    if not rows:
        return None
    cols: list[str] = []
    for _, c in rows:
        cols += [k for k in c if k not in cols]
    return _table(["kernel/mode"] + cols, [[k] + [c.get(col, "") for col in cols] for k, c in rows])


def render_figures(df: pd.DataFrame, fig_dir: Path) -> list[dict]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fig in plots.figures(df).items():
        plots.freeze_layout(fig)
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
            svg = plots.to_svg(fig)
        (fig_dir / f"{name}.svg").write_text(svg)
        fig.savefig(fig_dir / f"{name}.png", format="png", dpi=100)
        out.append(
            {
                "name": name,
                "title": FIGURE_TITLES.get(name, name),
                "svg": Markup(svg),
                "png": f"{fig_dir.name}/{name}.png",
                "doc": (plots.FIGURES[name].__doc__ or "").strip(),
            }
        )
    return out


def scenario_shape(meta: dict) -> str:
    """The measurements a run's scenario enabled: runs laid side by side must share it."""
    measure = (meta.get("scenario") or {}).get("measure") or {}
    on = [k for k, v in measure.items() if not (isinstance(v, dict) and v.get("enabled") is False)]
    return ",".join(sorted(on))


def check_side_by_side(metas: Sequence[dict]) -> None:
    """Refuse (one-line ResultsError) runs whose scenarios measured different things."""
    shapes = {str(m.get("run_id")): scenario_shape(m) for m in metas}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{r}={v or 'none'}" for r, v in shapes.items())
        raise results.ResultsError(
            f"cannot lay runs side by side: their scenarios measure different things "
            f"({shown}); report them separately"
        )


def report_context(run_dirs, fig_dir: Path | None) -> dict:
    """Everything the templates show; `fig_dir=None` skips rendering figures (the slow part)."""
    rs = results.load_runs(run_dirs, keys=results.MUST_MATCH_REPORT)
    df, metas = rs.samples, rs.metas
    check_side_by_side(metas)
    warns = list(rs.warnings)
    for m in metas:
        if m.get("status") != "complete":
            warns.append(
                f"run {m.get('run_id')} is {m.get('status', 'of unknown status')}: some points are missing"
            )
    pts_tab, samples_tab = quality_table(df, rs.points)
    n_points = len(rs.points)
    return {
        "title": "kpbench report: " + ", ".join(str(m.get("run_id")) for m in metas),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "synthetic": any(bool(m.get("synthetic")) for m in metas),
        "runs": environment_info(metas),
        "kernels": sorted(map(str, df["kernel"].unique())),
        "modes": sorted(map(str, df["mode"].unique())),
        "counts": [units.count(n) for n in sorted(int(n) for n in df["n_services"].unique())],
        "n_samples": len(df),
        "n_points": n_points,
        "n_ok": int((rs.points["status"] == "ok").sum()) if n_points else 0,
        "warnings": warns,
        "caveats": CAVEATS,
        "findings": findings.summary(df, rs.points),
        "rule": analysis.decision_rule(),
        "figures": render_figures(df, fig_dir) if len(df) and fig_dir is not None else [],
        "fits": fits_table(df),
        "comparison": mode_comparison_table(df),
        "version_comparison": version_comparison_table(df),
        "releases": analysis.releases(df),
        "quantiles": quantile_tables(df),
        "disruption": disruption_table(df),
        "points_quality": pts_tab,
        "samples_quality": samples_tab,
        "validation": validation_matrix(metas, rs.points),
        "plans": plan_tables(metas),
    }


PROGRAMMED_BY = {
    "lab": "lab dataplane (kube-proxy's rules, applied by kpbench)",
    "local": "real kube-proxy",
    "cluster": "real kube-proxy (cluster)",
}


def _samples_spent(adaptive: dict | None) -> str:
    """'add 7 (+-36%), update 6 (+-4%)': samples spent per series and the CI reached (a one-change
    kind by its name; the other series by metric and tag, e.g. 'request_us keepalive=false')."""
    if not adaptive:
        return ""
    parts = []
    for key, a in adaptive.items():
        ci = "no CI" if a.get("ci_rel") is None else f"+-{a['ci_rel']:.0%}"
        label = key.rpartition("=")[2] if key.startswith("sync_one_s") else key
        parts.append(f"{label} {a.get('samples')}/{a.get('cap')} ({ci})")
    return ", ".join(parts)


def plan_tables(metas: Sequence[dict]) -> list[dict]:
    """Per run: projected against actual seconds per phase and in total, and the points its budget
    left unmeasured (with their projected cost and the command that measures them)."""
    out = []
    for m in metas:
        plan = m.get("plan")
        if not plan or not plan.get("phases"):
            continue
        rows = [[ph["phase"], ph["projected_s"], ph["actual_s"]] for ph in plan["phases"]]
        rows.append(["total", plan.get("projected_total_s"), plan.get("actual_total_s")])
        over = plan.get("over_budget") or []
        who = PROGRAMMED_BY.get(str(m.get("target")), m.get("target"))
        cells = [
            [
                pid,
                who,
                r.get("ruleset", ""),
                r.get("full_sync_projected_s", r.get("projected", {}).get("sync_full")),
                (r.get("actual") or {}).get("sync_full"),
                _samples_spent(r.get("adaptive")),
            ]
            for pid, r in (plan.get("points") or {}).items()
            if r.get("fits", True)
        ]
        out.append(
            {
                "run_id": m.get("run_id"),
                "budget": plan.get("budget_text"),
                "phases": _table(["phase", "projected s", "actual s"], rows),
                "points": _table(
                    [
                        "point",
                        "programmed by",
                        "ruleset",
                        "full sync projected s",
                        "full sync actual s",
                        "samples spent/cap (95% CI of the median)",
                    ],
                    cells,
                )
                if cells
                else None,
                "over_budget": _table(
                    ["point", "projected s", "command"],
                    [[o["point_id"], o["projected_s"], o["command"]] for o in over],
                )
                if over
                else None,
            }
        )
    return out


def _env(autoescape: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]) if autoescape else False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    env.filters["tojson"] = lambda v: json.dumps(v, indent=2, default=str)
    return env


def publish(run_dirs, out_dir) -> Path:
    """A self-contained folder to put on any static host or attach to an issue: index.html (figures
    inlined as SVG), report.md with figures/ (PNG and SVG), samples.parquet and samples.csv (every
    raw sample of the runs), metadata.json (each run's metadata). Returns the index.html path."""
    dirs = results.resolve_runs(run_dirs)
    out = Path(out_dir)
    html = build_report(dirs, out)
    index = out / "index.html"
    html.replace(index)
    df = results.load(dirs, keys=results.MUST_MATCH_REPORT)
    df.to_parquet(out / "samples.parquet", index=False)
    df.to_csv(out / "samples.csv", index=False)
    metas = [{k: v for k, v in results.load_metadata(d).items() if not str(k).startswith("_")} for d in dirs]
    (out / "metadata.json").write_text(
        json.dumps(metas if len(metas) > 1 else metas[0], indent=2, default=str)
    )
    return index


def build_report(run_dirs, out_dir) -> Path:
    """Write out_dir/report.html (self-contained) and out_dir/report.md (+ out_dir/figures/);
    returns the HTML path. Raises results.ResultsError for missing, unreadable or
    non-comparable runs."""
    dirs = results.resolve_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = report_context(dirs, out / "figures")
    html = _env(True).get_template("report.html.j2").render(**ctx)
    (out / "report.html").write_text(html)
    md = _env(False).get_template("report.md.j2").render(**ctx)
    (out / "report.md").write_text(md)
    return out / "report.html"
