"""Figures from the sample table. Each function takes the DataFrame of harness.results.load and
returns a matplotlib Figure (object API with the Agg canvas: no pyplot, no global state, works
headless and inside notebooks). Modes are only ever drawn against each other within one kernel:
every figure has one column of panels per kernel.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from harness import analysis, metrics, units
from harness.modes import all_modes

MODE_STYLE = {name: {"color": spec.color, "marker": spec.marker} for name, spec in all_modes().items()}
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _style(mode: str) -> dict:
    if mode in MODE_STYLE:
        return MODE_STYLE[mode]
    return {"color": _FALLBACK[hash(mode) % len(_FALLBACK)], "marker": "D"}


RUN_LINESTYLES = ["-", "--", "-.", ":"]
PANEL_W, PANEL_H = 5.2, 3.4  # inches per panel: two panels side by side fit a page's width


def _figure(nrows: int, ncols: int, title: str) -> tuple[Figure, np.ndarray]:
    w, h = PANEL_W * ncols + 0.4, PANEL_H * nrows + 1.2
    # constrained layout keeps axis labels, titles and the legend below the panels inside the
    # figure (fixed margins cut long y labels off); freeze_layout() runs it once
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    fig.suptitle(textwrap.fill(title, width=max(30, int(w * 11))), fontsize="medium")
    return fig, axes


def _empty(title: str, msg: str = "no data for this figure") -> Figure:
    fig, axes = _figure(1, 1, title)
    ax = axes[0, 0]
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_axis_off()
    return fig


def kernels(df: pd.DataFrame) -> list[str]:
    return sorted(map(str, df["kernel"].dropna().unique())) if len(df) else []


def runs(df: pd.DataFrame) -> list[str]:
    """Run ids in the data: several runs are drawn side by side, one series per (mode, run)."""
    return sorted(map(str, df["run_id"].dropna().unique())) if len(df) and "run_id" in df else []


VARIANT_MARKER_FILL = ["full", "none", "left", "bottom"]


def _variant_series(d: pd.DataFrame, mode: str, dm: pd.DataFrame, st: dict):
    """(label, style, rows) per (release, endpoints) of `mode` when the data sweeps either: one
    series per (mode, release), told apart by line style and marker fill."""
    cols = [c for c in ("kube_proxy_version", "endpoints") if c in d and d[c].nunique() > 1]
    if not cols:
        return None
    keys = sorted(
        {tuple(r) for r in d[cols].astype(str).drop_duplicates().itertuples(index=False)},
        key=lambda t: tuple(
            analysis._release_key(x) if c == "kube_proxy_version" else (int(x),)
            for c, x in zip(cols, t, strict=True)
        ),
    )
    out = []
    for i, key in enumerate(keys):
        sel = dm
        for c, v in zip(cols, key, strict=True):
            sel = sel[sel[c].astype(str) == v]
        if len(sel):
            words = [v if c == "kube_proxy_version" else f"{v} ep" for c, v in zip(cols, key, strict=True)]
            out.append(
                (
                    f"{mode} {' '.join(words)}",
                    {
                        **st,
                        "linestyle": RUN_LINESTYLES[i % len(RUN_LINESTYLES)],
                        "fillstyle": VARIANT_MARKER_FILL[i % len(VARIANT_MARKER_FILL)],
                    },
                    sel,
                )
            )
    return out


def _series(d: pd.DataFrame, all_runs: Sequence[str]):
    """(label, style, rows) per mode, per (release, endpoints) when the data sweeps them, and per
    run when several runs are laid side by side."""
    for mode in sorted(map(str, d["mode"].unique())):
        dm = d[d["mode"] == mode]
        st = dict(_style(mode))
        if len(all_runs) <= 1:
            variants = _variant_series(d, mode, dm, st)
            if variants is None:
                yield mode, st, dm
            else:
                yield from variants
            continue
        for i, run in enumerate(all_runs):
            dr = dm[dm["run_id"] == run]
            if len(dr):
                yield f"{mode} ({run})", {**st, "linestyle": RUN_LINESTYLES[i % len(RUN_LINESTYLES)]}, dr


def _sel(df: pd.DataFrame, metric: str, **tags) -> pd.DataFrame:
    d = df[df["metric"] == metric]
    for t, v in tags.items():
        if v is not None and t in d and (d[t] == v).any():
            d = d[d[t] == v]
    return d


def _unit(metric: str) -> str:
    """Axis-label unit: always the registry's (harness.metrics), never the data's."""
    return metrics.unit(metric)


def _count_axis(ax, counts: Sequence[int]) -> None:
    """Log x axis of Service counts with plain tick numbers at the measured counts (1,000 not 10^3)."""
    ax.set_xscale("log")
    cs = sorted({int(c) for c in counts if c > 0})
    if cs:
        ax.xaxis.set_major_locator(FixedLocator(cs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{int(round(v)):,}"))
        ax.xaxis.set_minor_locator(NullLocator())
        if len(cs) > 1:
            ax.set_xlim(cs[0] / 1.25, cs[-1] * 1.25)
        if len(cs) > 5:
            ax.tick_params(axis="x", labelrotation=30)
    ax.grid(True, which="major", alpha=0.25)


def _value_axis(ax, metric: str, what: str, *, log: bool = False, axis: str = "y") -> None:
    """Value axis: plain tick numbers with the metric's unit on one scale ("73 us", "250 us"),
    the label naming the quantity and the unit ("connect latency p50 [us]")."""
    unit = _unit(metric)
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if unit in metrics.TIME_UNITS:
        prefix = units.time_prefix(max(abs(hi), abs(lo)) * metrics.TIME_UNITS[unit] / 3)[0]
        label_unit = prefix
    else:
        prefix, label_unit = (
            None,
            units.quantity(1, unit).split(" ", 1)[-1] if unit not in ("count",) else "count",
        )
    if log:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        a.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10)), numticks=12))
        a.set_minor_formatter(NullFormatter())

    def fmt(v, _p=None):
        if v <= 0 and log:
            return ""
        txt = (
            units.quantity(v, unit, digits=2, prefix=prefix) if prefix else units.quantity(v, unit, digits=2)
        )
        return txt.replace(".0 ", " ")

    a.set_major_formatter(FuncFormatter(fmt))
    (ax.set_ylabel if axis == "y" else ax.set_xlabel)(f"{what} [{label_unit}]")


def _legend(fig: Figure, axes: np.ndarray, extra: Sequence = ()) -> None:
    """One legend for the whole figure, below the panels (never over the data)."""
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    for h in extra:
        handles.append(h)
        labels.append(h.get_label())
    if handles:
        # as many columns as fit the figure's width (~0.075 in per character at the small size)
        width = fig.get_figwidth()
        per = max(len(lab) for lab in labels) * 0.075 + 0.6
        ncols = max(1, min(4, len(handles), int(width // per)))
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)


def _vs_n(ax, d: pd.DataFrame, stat: str, *, all_runs: Sequence[str] = (), label_suffix: str = "") -> bool:
    """Per series: centre = median over reps of per-rep `stat`, band = min..max over reps."""
    drew = False
    for label, st, dd in _series(d, all_runs):
        g = analysis.bands(dd, stat=stat, how="minmax").sort_values("n_services")
        if g.empty:
            continue
        ax.plot(g["n_services"], g["center"], label=f"{label}{label_suffix}", **st)
        if (g["n_reps"] > 1).any():
            ax.fill_between(g["n_services"], g["lo"], g["hi"], color=st["color"], alpha=0.18, linewidth=0)
        drew = True
    _count_axis(ax, d["n_services"].unique() if len(d) else [])
    return drew


def hashing_vs_chain(df: pd.DataFrame, band: tuple[float, float] = (0.25, 0.75)) -> Figure:
    """Connect latency to a random ClusterIP against the Service count, per mode: the median (line)
    with its p25-p75 band over all samples, the first and last Service in the mode's lookup order
    (thin dashed and dotted lines) and the straight-line fit of the per-repetition medians (grey).
    A chain (iptables) climbs with the count; a hash (IPVS, nftables maps) stays flat."""
    (metric,) = [m for m in metrics.in_figure("connect_latency")][:1]
    title = "Hashing versus chain: connect latency vs Service count (line: median, band: p25-p75)"
    d = df[df["metric"] == metric]
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    all_runs = runs(d)
    fig, axes = _figure(1, len(ks), title)
    for j, k in enumerate(ks):
        ax = axes[0, j]
        dk = d[d["kernel"] == k]
        rnd = dk[dk["position"] == "random"] if (dk["position"] == "random").any() else dk
        for label, st, g in _series(rnd, all_runs):
            q = g.groupby("n_services", observed=True)["value"].quantile([band[0], 0.5, band[1]]).unstack()
            q = q.sort_index()
            ax.plot(
                q.index,
                q[0.5],
                label=label,
                color=st["color"],
                marker=st["marker"],
                linestyle=st.get("linestyle", "-"),
            )
            ax.fill_between(q.index, q[band[0]], q[band[1]], color=st["color"], alpha=0.18, linewidth=0)
            fit = analysis.scaling_fits(g.assign(position="random"), [metric])
            if len(fit) and np.isfinite(fit.iloc[0]["per_1k"]):
                f = fit.iloc[0]
                xs = np.geomspace(q.index.min(), q.index.max(), 50)
                ax.plot(
                    xs,
                    f["intercept"] + f["per_1k"] * xs / 1000.0,
                    color="#555",
                    linewidth=0.9,
                    linestyle=(0, (1, 1)),
                    zorder=1,
                )
        for pos, ls in (("first", "--"), ("last", ":")) if len(all_runs) <= 1 else ():
            dp = dk[dk["position"] == pos]
            for _label, st, g in _series(dp, all_runs):
                m = g.groupby("n_services", observed=True)["value"].median().sort_index()
                ax.plot(
                    m.index,
                    m.values,
                    color=st["color"],
                    linestyle=ls,
                    linewidth=1.1,
                    marker=st["marker"],
                    markersize=3.5,
                    markerfacecolor="none",
                )
        _count_axis(ax, dk["n_services"].unique())
        ax.set_ylim(bottom=0)
        ax.set_title(k, fontsize="medium")
        ax.set_xlabel("Services (log scale)")
        _value_axis(ax, metric, "connect latency")
    keys = [Line2D([], [], color="#555", linestyle=(0, (1, 1)), linewidth=0.9, label="straight-line fit")]
    if len(all_runs) <= 1:  # several runs: one line per run, the positions would crowd it
        keys[:0] = [
            Line2D([], [], color="#333", linestyle="--", linewidth=1.1, label="first Service (median)"),
            Line2D([], [], color="#333", linestyle=":", linewidth=1.1, label="last Service (median)"),
        ]
    _legend(fig, axes, keys)
    return fig


def connect_latency(
    df: pd.DataFrame, stats: Sequence[str] = ("p50", "p99"), position: str = "random"
) -> Figure:
    """TCP connect latency to a ClusterIP (p50 and p99) vs Service count, per mode, per kernel.
    Lines: median over repetitions of the per-repetition statistic; bands: min..max over repetitions."""
    title = f"Connect latency to a ClusterIP (position={position}) vs Service count"
    (metric,) = metrics.in_figure("connect_latency")[:1]
    d = _sel(df, metric, position=position)
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    all_runs = runs(d)
    fig, axes = _figure(len(stats), len(ks), title)
    for j, k in enumerate(ks):
        dk = d[d["kernel"] == k]
        for i, stat in enumerate(stats):
            ax = axes[i, j]
            _vs_n(ax, dk, stat, all_runs=all_runs)
            ax.set_title(f"{k}: {stat}", fontsize="medium")
            ax.set_xlabel("Services (log scale)")
            _value_axis(ax, metric, f"{stat} connect latency", log=True)
    _legend(fig, axes)
    return fig


def sync_latency(df: pd.DataFrame, stat: str = "p50") -> Figure:
    """Time to program one Service change (add/update/delete) and a full sync, vs Service count.
    The title says who programmed the dataplane: the lab (the kernel's share only) or the real
    kube-proxy (the rows' `target`). Lines: median over repetitions; bands: min..max."""
    from harness.findings import programmed_by

    one_m, full_m = metrics.in_figure("sync_latency")  # one change, full sync
    d = df[df["metric"].isin([one_m, full_m])]
    who = programmed_by(d["target"].unique()) if "target" in d and len(d) else "unknown"
    title = f"Dataplane programming time vs Service count, programmed by {who}"
    one = df[df["metric"] == one_m]
    changes = [c for c in ("add", "update", "delete") if (one["change"] == c).any()] if len(one) else []
    changes += sorted(set(map(str, one["change"].unique())) - set(changes) - {""}) if len(one) else []
    if len(one) and (one["change"] == "").any():
        changes.append("")
    panels = [(one_m, c) for c in changes]
    if (df["metric"] == full_m).any():
        panels.append((full_m, ""))
    ks = kernels(d)
    if not panels or not ks:
        return _empty(title)
    all_runs = runs(d)
    # panels side by side in rows of two, one block of rows per kernel
    ncols = 2 if len(panels) > 1 else 1
    per_k = -(-len(panels) // ncols)
    fig, axes = _figure(per_k * len(ks), ncols, title)
    for j, k in enumerate(ks):
        for i, (metric, change) in enumerate(panels):
            ax = axes[j * per_k + i // ncols, i % ncols]
            dd = d[(d["kernel"] == k) & (d["metric"] == metric)]
            if metric == one_m:
                dd = dd[dd["change"] == change]
            _vs_n(ax, dd, stat, all_runs=all_runs)
            what = f"one change ({change or 'any'})" if metric == one_m else "full sync"
            ax.set_title(f"{k}: {what}", fontsize="medium")
            ax.set_xlabel("Services (log scale)")
            _value_axis(ax, metric, f"{stat} {what}", log=True)
        for i in range(len(panels), per_k * ncols):
            axes[j * per_k + i // ncols, i % ncols].set_axis_off()
    _legend(fig, axes)
    return fig


def request_cdf(df: pd.DataFrame, metric: str | None = None, n_services: int | None = None) -> Figure:
    """Request latency CDF per mode at the largest Service count (per kernel), keepalive on and off."""
    metric = metric or metrics.in_figure("request_cdf")[0]
    d = df[df["metric"] == metric]
    title = f"Request latency CDF ({metric}) at the largest Service count"
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    all_runs = runs(d)
    kas = [k for k in ("true", "false") if (d["keepalive"] == k).any()] or [""]
    fig, axes = _figure(len(kas), len(ks), title)
    for j, k in enumerate(ks):
        dk = d[d["kernel"] == k]
        n = int(dk["n_services"].max()) if n_services is None else n_services
        dk = dk[dk["n_services"] == n]
        for i, ka in enumerate(kas):
            ax = axes[i, j]
            dd = dk[dk["keepalive"] == ka] if ka else dk
            for label, st, g in _series(dd, all_runs):
                v = np.sort(g["value"].to_numpy(float))
                if not len(v):
                    continue
                y = np.arange(1, len(v) + 1) / len(v)
                ax.step(
                    v, y, where="post", color=st["color"], linestyle=st.get("linestyle", "-"), label=label
                )
            ax.set_ylim(0, 1.01)
            ax.grid(True, which="major", alpha=0.25)
            ax.set_title(f"{k}: {units.count(n)} Services, keepalive={ka or 'n/a'}", fontsize="medium")
            ax.set_ylabel("fraction of requests")
            _value_axis(ax, metric, "request latency", log=True, axis="x")
    _legend(fig, axes)
    return fig


def cpu_usage(df: pd.DataFrame, metric: str | None = None, stat: str = "p50") -> Figure:
    """CPU cost of serving the load, per mode vs Service count, keepalive on and off.
    Lines: median over repetitions; bands: min..max."""
    preferred, *alternatives = metrics.in_figure("cpu_usage")  # first present one is drawn
    metric = metric or preferred
    d = df[df["metric"] == metric]
    if d.empty:
        for alt in alternatives:
            if (df["metric"] == alt).any():
                metric, d = alt, df[df["metric"] == alt]
                break
    title = f"CPU under load ({metric}) vs Service count"
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    all_runs = runs(d)
    kas = [k for k in ("true", "false") if (d["keepalive"] == k).any()] or [""]
    fig, axes = _figure(len(kas), len(ks), title)
    for j, k in enumerate(ks):
        for i, ka in enumerate(kas):
            ax = axes[i, j]
            dd = d[d["kernel"] == k]
            dd = dd[dd["keepalive"] == ka] if ka else dd
            _vs_n(ax, dd, stat, all_runs=all_runs)
            ax.set_title(f"{k}: keepalive={ka or 'n/a'}", fontsize="medium")
            ax.set_xlabel("Services (log scale)")
            _value_axis(ax, metric, "CPU busy" if metric.endswith("_pct") else metric)
    _legend(fig, axes)
    return fig


def iptables_position(df: pd.DataFrame, stat: str = "p50") -> Figure:
    """iptables: connect latency to the first vs the last Service in the chain, vs Service count.
    Lines: median over repetitions of the per-repetition p50; bands: min..max."""
    metric = metrics.in_figure("iptables_position")[0]
    d = df[(df["metric"] == metric) & (df["mode"] == "iptables")]
    title = "iptables: connect latency by rule position vs Service count"
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    all_runs = runs(d)
    fig, axes = _figure(1, len(ks), title)
    for j, k in enumerate(ks):
        ax = axes[0, j]
        dk = d[d["kernel"] == k]
        for pos, ls in (("first", "--"), ("last", "-"), ("random", ":")):
            dd = dk[dk["position"] == pos]
            if dd.empty:
                continue
            for i, run in enumerate(all_runs or [""]):
                dr = dd[dd["run_id"] == run] if run else dd
                b = analysis.bands(dr, stat=stat).sort_values("n_services")
                if b.empty:
                    continue
                lab = pos if len(all_runs) <= 1 else f"{pos} ({run})"
                line = ax.plot(
                    b["n_services"],
                    b["center"],
                    linestyle=ls,
                    marker=_style("iptables")["marker"],
                    label=lab,
                    alpha=1.0 if i == 0 else 0.6,
                )[0]
                if (b["n_reps"] > 1).any():
                    ax.fill_between(
                        b["n_services"], b["lo"], b["hi"], color=line.get_color(), alpha=0.15, linewidth=0
                    )
        _count_axis(ax, dk["n_services"].unique())
        ax.set_title(f"{k}: {stat}", fontsize="medium")
        ax.set_xlabel("Services (log scale)")
        _value_axis(ax, metric, f"{stat} connect latency")
    _legend(fig, axes)
    return fig


def disruption_timeline(df: pd.DataFrame) -> Figure:
    """Disruption prober at the largest Service count: each new connection's latency (log scale) at
    its start time relative to the sync's start, failures as red marks along the top, the sync
    shaded from its start to its end. One row of panels per (kernel, mode), one column per sync
    kind; the first repetition of each."""
    m_conn, m_fail, m_sync = metrics.in_figure("disruption_timeline")
    title = "Disruption during a sync: new connections to existing Services"
    d = df[df["metric"].isin([m_conn, m_sync])]
    if d.empty:
        return _empty(title)
    d = d[d["n_services"] == d["n_services"].max()]
    d = d[d["rep"] == d["rep"].min()]
    rows_ = sorted({(str(k), str(m)) for k, m in zip(d["kernel"], d["mode"], strict=True)})
    kinds = [k for k in ("full", "cold", "add", "update", "delete") if k in set(d["sync"].astype(str))]
    fig, axes = _figure(
        len(rows_), len(kinds), f"{title} ({units.count(int(d['n_services'].max()))} Services)"
    )
    for i, (k, mode) in enumerate(rows_):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            dk = d[(d["kernel"] == k) & (d["mode"] == mode) & (d["sync"] == kind)]
            sync = dk[dk["metric"] == m_sync]
            c = dk[dk["metric"] == m_conn]
            if sync.empty or c.empty:
                ax.set_axis_off()
                continue
            t0, length_ms = float(sync["seq"].iloc[0]) / 1e3, float(sync["value"].iloc[0]) / 1e3
            x = c["seq"].astype(float) / 1e3 - t0
            ok = ~c["timed_out"].astype(bool) & (c["error"].astype(str) == "")
            ax.scatter(
                x[ok], c["value"][ok].astype(float), s=3, color=_style(mode)["color"], label="connected"
            )
            bad = ~ok & (c["error"].astype(str) != "pending")
            if bad.any():
                ax.scatter(
                    x[bad],
                    c["value"][bad].astype(float),
                    s=10,
                    marker="x",
                    color="black",
                    label="failed (at timeout)",
                )
            ax.axvspan(0, max(length_ms, 0.5), color="#888", alpha=0.25, linewidth=0, label="sync")
            ax.set_yscale("log")
            ax.set_title(f"{k} {mode}: {kind}", fontsize="medium")
            ax.set_xlabel("time from the sync's start (ms)")
            ax.set_ylabel("connect latency (us)")
    _legend(fig, axes)
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "hashing_vs_chain": hashing_vs_chain,
    "connect_latency": connect_latency,
    "sync_latency": sync_latency,
    "request_cdf": request_cdf,
    "request_cdf_corrected": lambda df: request_cdf(df, metric=metrics.in_figure("request_cdf_corrected")[0]),
    "cpu_usage": cpu_usage,
    "iptables_position": iptables_position,
    "disruption_timeline": disruption_timeline,
}


def figures(df: pd.DataFrame) -> dict[str, Figure]:
    """Every report figure, by name (skips figures whose metric is absent)."""
    out = {}
    for name, fn in FIGURES.items():
        if (
            name in ("request_cdf_corrected", "disruption_timeline")
            and not df["metric"].isin(metrics.in_figure(name)).any()
        ):
            continue
        out[name] = fn(df)
    return out


def freeze_layout(fig: Figure) -> Figure:
    """Run the constrained layout once and keep its result, so saving a figure in several
    formats does not lay it out again each time (layout dominates the rendering cost)."""
    if fig.get_layout_engine() is not None:
        fig.canvas.draw()
        fig.set_layout_engine("none")
    return fig


def axis_labels(fig: Figure) -> list[tuple[str, str]]:
    """(x label, y label) of every visible panel: what a reader checks for units."""
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.get_visible() and ax.axison]


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    s = buf.getvalue()
    return s[s.find("<svg") :]  # drop the XML prolog/doctype for inline use


def save_all(df: pd.DataFrame, outdir: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write every figure as outdir/<name>.<fmt>; returns the paths written."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(df).items():
        freeze_layout(fig)
        for fmt in formats:
            p = outdir / f"{name}.{fmt}"
            fig.savefig(p, format=fmt, dpi=110)
            paths.append(p)
    return paths
