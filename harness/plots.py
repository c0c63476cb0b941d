"""Figures from the sample table. Each function takes the DataFrame of harness.results.load and
returns a matplotlib Figure (object API with the Agg canvas: no pyplot, no global state, works
headless and inside notebooks). Modes are only ever drawn against each other within one kernel:
every figure has one column of panels per kernel.
"""

from __future__ import annotations

import textwrap

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from harness import analysis, metrics
from harness.modes import all_modes

MODE_STYLE = {name: {"color": spec.color, "marker": spec.marker} for name, spec in all_modes().items()}
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _style(mode: str) -> dict:
    if mode in MODE_STYLE:
        return MODE_STYLE[mode]
    return {"color": _FALLBACK[hash(mode) % len(_FALLBACK)], "marker": "D"}


def _figure(nrows: int, ncols: int, title: str) -> tuple[Figure, np.ndarray]:
    w, h = 4.6 * ncols, 3.3 * nrows + 0.5
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    # fixed margins (in inches) instead of a layout engine: layout costs an extra full draw
    fig.subplots_adjust(left=0.8 / w, right=1 - 0.2 / w, bottom=0.6 / h, top=1 - 0.75 / h,
                        wspace=0.9 / 4.6 * 1.2, hspace=0.75 / 3.3 * 1.6)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    # wrap to the figure's width (about 11 characters per inch at the default size) so that a
    # one-column figure does not clip its title
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


def _sel(df: pd.DataFrame, metric: str, **tags) -> pd.DataFrame:
    d = df[df["metric"] == metric]
    for t, v in tags.items():
        if v is not None and t in d and (d[t] == v).any():
            d = d[d[t] == v]
    return d


def _unit(metric: str) -> str:
    """Axis-label unit: always the registry's (harness.metrics), never the data's."""
    return metrics.unit(metric)


def _vs_n(ax, d: pd.DataFrame, stat: str, *, label_suffix: str = "", linestyle: str = "-") -> bool:
    """Per mode: centre = median over reps of per-rep `stat`, band = min..max over reps."""
    b = analysis.bands(d, stat=stat, how="minmax")
    drew = False
    for mode, g in b.groupby("mode", sort=True):
        g = g.sort_values("n_services")
        st = _style(str(mode))
        ax.plot(g["n_services"], g["center"], linestyle=linestyle, label=f"{mode}{label_suffix}", **st)
        if (g["n_reps"] > 1).any():
            ax.fill_between(g["n_services"], g["lo"], g["hi"], color=st["color"], alpha=0.18, linewidth=0)
        drew = True
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.25)
    return drew


def _finish(ax, xlabel: str | None, ylabel: str | None, legend: bool) -> None:
    # minor tick labels on log axes cost thousands of text objects and add little
    # (y keeps them: a log y axis spanning less than a decade needs its minor labels)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def connect_latency(df: pd.DataFrame, stats: Sequence[str] = ("p50", "p99"), position: str = "random") -> Figure:
    """TCP connect latency to a ClusterIP (p50 and p99) vs Service count, per mode, per kernel."""
    title = f"Connect latency to a ClusterIP (position={position}) vs Service count"
    (metric,) = metrics.in_figure("connect_latency")
    d = _sel(df, metric, position=position)
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    fig, axes = _figure(len(stats), len(ks), title)
    for j, k in enumerate(ks):
        dk = d[d["kernel"] == k]
        for i, stat in enumerate(stats):
            ax = axes[i, j]
            _vs_n(ax, dk, stat)
            ax.set_yscale("log")
            ax.set_title(f"{k}: {stat}", fontsize="medium")
            _finish(ax, "Services" if i == len(stats) - 1 else None, f"{stat} connect [{_unit(metric)}]", i == 0)
    return fig


def sync_latency(df: pd.DataFrame, stat: str = "p50") -> Figure:
    """Time to program one Service change (add/update/delete) and a full sync, vs Service count."""
    title = "Dataplane programming time vs Service count"
    one_m, full_m = metrics.in_figure("sync_latency")  # one change, full sync
    one = df[df["metric"] == one_m]
    changes = [c for c in ("add", "update", "delete") if (one["change"] == c).any()] if len(one) else []
    changes += sorted(set(map(str, one["change"].unique())) - set(changes) - {""}) if len(one) else []
    if len(one) and (one["change"] == "").any():
        changes.append("")
    rows = [(one_m, c) for c in changes]
    if (df["metric"] == full_m).any():
        rows.append((full_m, ""))
    d = df[df["metric"].isin([one_m, full_m])]
    ks = kernels(d)
    if not rows or not ks:
        return _empty(title)
    fig, axes = _figure(len(rows), len(ks), title)
    for j, k in enumerate(ks):
        for i, (metric, change) in enumerate(rows):
            ax = axes[i, j]
            dd = d[(d["kernel"] == k) & (d["metric"] == metric)]
            if metric == one_m:
                dd = dd[dd["change"] == change]
            _vs_n(ax, dd, stat)
            ax.set_yscale("log")
            what = f"one change ({change or 'any'})" if metric == one_m else "full sync"
            ax.set_title(f"{k}: {what}, {stat}", fontsize="medium")
            _finish(ax, "Services" if i == len(rows) - 1 else None, f"{metric} [{_unit(metric)}]", i == 0)
    return fig


def request_cdf(df: pd.DataFrame, metric: str | None = None, n_services: int | None = None) -> Figure:
    """Request latency CDF per mode at the largest Service count (per kernel), keepalive on and off."""
    metric = metric or metrics.in_figure("request_cdf")[0]
    d = df[df["metric"] == metric]
    title = f"Request latency CDF ({metric}) at the largest Service count"
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    kas = [k for k in ("true", "false") if (d["keepalive"] == k).any()] or [""]
    fig, axes = _figure(len(kas), len(ks), title)
    for j, k in enumerate(ks):
        dk = d[d["kernel"] == k]
        n = int(dk["n_services"].max()) if n_services is None else n_services
        dk = dk[dk["n_services"] == n]
        for i, ka in enumerate(kas):
            ax = axes[i, j]
            dd = dk[dk["keepalive"] == ka] if ka else dk
            for mode, g in dd.groupby("mode", observed=True, sort=True):
                v = np.sort(g["value"].to_numpy(float))
                if not len(v):
                    continue
                y = np.arange(1, len(v) + 1) / len(v)
                st = _style(str(mode))
                ax.step(v, y, where="post", color=st["color"], label=f"{mode} (n={len(v)})")
            ax.set_xscale("log")
            ax.set_ylim(0, 1.01)
            ax.grid(True, which="both", alpha=0.25)
            ax.set_title(f"{k}: N={n:,}, keepalive={ka or 'n/a'}", fontsize="medium")
            _finish(ax, f"latency [{_unit(metric)}]", "fraction of requests", True)
    return fig


def cpu_usage(df: pd.DataFrame, metric: str | None = None, stat: str = "p50") -> Figure:
    """CPU cost of serving the load, per mode vs Service count, keepalive on and off."""
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
    kas = [k for k in ("true", "false") if (d["keepalive"] == k).any()] or [""]
    fig, axes = _figure(len(kas), len(ks), title)
    for j, k in enumerate(ks):
        for i, ka in enumerate(kas):
            ax = axes[i, j]
            dd = d[d["kernel"] == k]
            dd = dd[dd["keepalive"] == ka] if ka else dd
            _vs_n(ax, dd, stat)
            ax.set_title(f"{k}: keepalive={ka or 'n/a'}", fontsize="medium")
            _finish(ax, "Services" if i == len(kas) - 1 else None, f"{metric} [{_unit(metric)}]", i == 0)
    return fig


def iptables_position(df: pd.DataFrame, stat: str = "p50") -> Figure:
    """iptables: connect latency to the first vs the last Service in the chain, vs Service count."""
    (metric,) = metrics.in_figure("iptables_position")
    d = df[(df["metric"] == metric) & (df["mode"] == "iptables")]
    title = "iptables: connect latency by rule position vs Service count"
    ks = kernels(d)
    if d.empty:
        return _empty(title)
    fig, axes = _figure(1, len(ks), title)
    for j, k in enumerate(ks):
        ax = axes[0, j]
        dk = d[d["kernel"] == k]
        for pos, ls in (("first", "--"), ("last", "-"), ("random", ":")):
            dd = dk[dk["position"] == pos]
            if dd.empty:
                continue
            b = analysis.bands(dd, stat=stat).sort_values("n_services")
            st = _style("iptables")
            line = ax.plot(b["n_services"], b["center"], linestyle=ls, marker=st["marker"], label=pos)[0]
            if (b["n_reps"] > 1).any():
                ax.fill_between(b["n_services"], b["lo"], b["hi"], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.25)
        ax.set_title(f"{k}: {stat}", fontsize="medium")
        _finish(ax, "Services", f"{stat} connect [{_unit(metric)}]", True)
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "connect_latency": connect_latency,
    "sync_latency": sync_latency,
    "request_cdf": request_cdf,
    "request_cdf_corrected": lambda df: request_cdf(df, metric=metrics.in_figure("request_cdf_corrected")[0]),
    "cpu_usage": cpu_usage,
    "iptables_position": iptables_position,
}


def figures(df: pd.DataFrame) -> dict[str, Figure]:
    """Every report figure, by name (skips figures whose metric is absent)."""
    out = {}
    for name, fn in FIGURES.items():
        if name == "request_cdf_corrected" and not df["metric"].isin(metrics.in_figure(name)).any():
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


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    s = buf.getvalue()
    return s[s.find("<svg"):]  # drop the XML prolog/doctype for inline use


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
