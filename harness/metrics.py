"""The metric registry: every metric a sample row can carry, declared once.

Each entry says what the metric is (name, unit, one sentence), where the analysis shows it
(figures, quantile table, scaling fit, mode comparison), how many samples a repetition needs
before its distribution is trusted, and which tags split its series. The sample writer
(harness.samples), the report, plots, analysis, notebook and README's metric table all read it,
so adding a metric means adding one entry here and one writer.

Standard library only: the worker imports this inside a UML guest, where pandas is absent.

    python -m harness.metrics --markdown   # README's "What is measured" table
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from functools import lru_cache

# Units a metric may have. Time units carry their factor to microseconds.
TIME_UNITS: dict[str, float] = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}
UNITS: dict[str, str] = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "pct": "percent",
    "count": "a count",
    "rps": "per second",
}
# Names end in their unit, so a reader of samples.parquet can tell the unit from the name.
NAME_SUFFIX_UNIT: dict[str, str] = {"_s": "s", "_ms": "ms", "_us": "us", "_pct": "pct", "_rps": "rps"}


@dataclass(frozen=True)
class Metric:
    """One metric (or, with `*` in the name, a family of metrics named by a pattern)."""

    name: str
    unit: str
    what: str
    figures: tuple[str, ...] = ()  # harness.plots.FIGURES names that draw it
    table: bool = False  # report: quantile table per (kernel, mode, N, tags)
    fit: bool = False  # report/notebook: scaling fit against the Service count
    compare: bool = False  # report/notebook: modes compared at the largest Service count
    min_samples: int = 1  # fewer samples in a repetition is reported as few_samples
    split: tuple[str, ...] = ()  # sample tags whose values are separate series
    higher_is_better: bool = False
    readme: str = ""  # README row this metric is described in (default: its own row)
    # report's findings: what one sample is in plain words ("a new connection"), and the tag
    # values of the series quoted there (e.g. position=random); empty: not a headline metric
    headline: str = ""
    headline_tags: tuple[tuple[str, str], ...] = ()

    @property
    def is_family(self) -> bool:
        return "*" in self.name


_LOAD = ("keepalive",)
REGISTRY: tuple[Metric, ...] = (
    Metric(
        "connect_us",
        "us",
        "TCP handshake from a client pod to random ClusterIPs (`position=random`), and to the first / "
        "last Service in the mode's lookup order (`position=first|last`)",
        figures=("connect_latency", "iptables_position"),
        table=True,
        fit=True,
        compare=True,
        min_samples=100,
        split=("position",),
        headline="a new connection",
        headline_tags=(("position", "random"),),
    ),
    Metric(
        "connect_direct_us",
        "us",
        "the same straight to a pod IP: the floor, so the Service's own cost can be isolated",
        fit=True,
        min_samples=100,
        split=("path",),
    ),
    Metric(
        "request_us",
        "us",
        "locust `GET /` at a fixed rate through ClusterIPs, `keepalive=false` (new connection per "
        "request) and `keepalive=true`",
        figures=("request_cdf",),
        table=True,
        fit=True,
        compare=True,
        min_samples=100,
        split=_LOAD,
    ),
    Metric(
        "request_corrected_us",
        "us",
        "the same request counted from its intended start (corrects for coordinated omission)",
        figures=("request_cdf_corrected",),
        table=True,
        fit=True,
        min_samples=100,
        split=_LOAD,
    ),
    Metric(
        "request_lateness_us",
        "us",
        "the load generator's own lateness: actual start - intended start of each request. Large "
        "values while the dataplane is fast mean the generator, not the dataplane, ran late",
        table=True,
        split=_LOAD,
    ),
    Metric(
        "sync_one_s",
        "s",
        "one change (`change=add|update|delete`) from the moment it is asked for until the client "
        "sees it served (or gone), polled at 1 ms",
        figures=("sync_latency",),
        table=True,
        fit=True,
        compare=True,
        split=("change", "path"),
        headline="adding one Service",
        headline_tags=(("change", "add"),),
    ),
    Metric(
        "sync_apply_s",
        "s",
        "the apply call of one change alone (the dataplane's own cost)",
        fit=True,
        split=("change",),
    ),
    Metric(
        "sync_full_s",
        "s",
        "programming all N Services from an empty dataplane (a kube-proxy restart)",
        figures=("sync_latency",),
        table=True,
        fit=True,
        compare=True,
        headline="a full sync",
    ),
    Metric(
        "sync_full_warm_s",
        "s",
        "rewriting all N Services over the live dataplane the way kube-proxy's first sync after a "
        "restart does (local target: that sync of the restarted kube-proxy, from its metrics; "
        "`path=prober|quiet`: with / without the disruption prober running)",
        table=True,
        fit=True,
        split=("path",),
    ),
    Metric(
        "disrupt_connect_us",
        "us",
        "disruption prober: each new connection to a Service that exists before and after a sync "
        "(`sync=full|cold|add|update|delete`, `phase=before|during|after`); failures kept, value = timeout",
        figures=("disruption_timeline",),
        table=True,
        split=("sync", "phase"),
    ),
    Metric(
        "disrupt_failed",
        "count",
        "disruption prober: one row per failed new connection (`error=refused|reset|unreachable|"
        "timeout`); failure rate = rows / disrupt_connect_us rows",
        figures=("disruption_timeline",),
        split=("sync", "phase"),
    ),
    Metric(
        "disrupt_request_us",
        "us",
        "disruption prober: each request on an established keepalive connection during a sync",
        split=("sync", "phase"),
    ),
    Metric(
        "disrupt_gap_ms",
        "ms",
        "disruption prober: longest interval with no successful new connection, per sync and phase",
        table=True,
        split=("sync", "phase"),
    ),
    Metric(
        "disrupt_sync_us",
        "us",
        "disruption prober: the sync observed (value its length, `seq` its start on the attempts' axis)",
        figures=("disruption_timeline",),
        split=("sync",),
    ),
    Metric(
        "program_us",
        "us",
        "local target: one change from the API call's return until it is served; cluster target: "
        "kube-proxy's mean sync time from its own metrics (`path=kube-proxy-metrics`)",
        split=("change", "path"),
    ),
    Metric(
        "cpu_busy_pct",
        "pct",
        "share of all CPU time that was busy (not idle or iowait) during a load phase (from /proc/stat)",
        figures=("cpu_usage",),
        table=True,
        fit=True,
        compare=True,
        split=_LOAD,
    ),
    Metric(
        "cpu_softirq_s",
        "s",
        "softirq CPU seconds during a load phase (from /proc/stat)",
        figures=("cpu_usage",),
        fit=True,
        split=_LOAD,
    ),
    Metric(
        "cpu_system_s",
        "s",
        "system CPU seconds during a load phase (from /proc/stat)",
        figures=("cpu_usage",),
        split=_LOAD,
    ),
    Metric("cpu_user_s", "s", "user (+ nice) CPU seconds during a load phase (from /proc/stat)", split=_LOAD),
    Metric("cpu_irq_s", "s", "hard-irq CPU seconds during a load phase (from /proc/stat)", split=_LOAD),
    Metric("cpu_wall_s", "s", "wall-clock length of the CPU measurement window", split=_LOAD),
    Metric("cpu_count", "count", "CPUs counted in /proc/stat for the CPU measurement", split=_LOAD),
    Metric(
        "load_achieved_rps",
        "rps",
        "requests per second the load generator achieved",
        table=True,
        split=_LOAD,
        higher_is_better=True,
    ),
    Metric("load_target_rps", "rps", "requests per second the load generator was asked for", split=_LOAD),
    Metric("load_requests", "count", "requests sent in a load phase", split=_LOAD, higher_is_better=True),
    Metric("load_failures", "count", "requests that failed or timed out in a load phase", split=_LOAD),
    Metric("load_missed", "count", "scheduled requests not started before the load phase ended", split=_LOAD),
    Metric("load_connections", "count", "TCP connections the load generator opened", split=_LOAD),
    Metric(
        "load_client_cpu_pct", "pct", "CPU share of the load generator itself (saturation check)", split=_LOAD
    ),
    Metric(
        "api_create_rps",
        "rps",
        "local target: Services + EndpointSlices created per second "
        "through the API when growing to N; `api_create_s` is how long that took",
    ),
    Metric(
        "api_create_s",
        "s",
        "local target: time to create the objects for one Service count",
        readme="api_create_rps",
    ),
    # kube-proxy's own /metrics (local target), `kp_<name without kubeproxy_>`: histograms as
    # _sum / _count / _bucket (tag path="le=<bound>"), counters and gauges (tag path=<table>).
    # First match wins, so the seconds patterns come before the catch-all count.
    Metric(
        "kp_*_seconds_sum",
        "s",
        "kube-proxy histogram sums of durations (`kp_*`)",
        split=("path",),
        readme="kp_*",
    ),
    Metric("kp_*_seconds", "s", "kube-proxy gauges in seconds", split=("path",), readme="kp_*"),
    Metric(
        "kp_*",
        "count",
        "kube-proxy's own metrics from /metrics (local target): histogram `_sum` (s), `_count` and "
        "`_bucket` (`path=le=<bound>`), counters and gauges (`path=<table>`)",
        split=("path",),
    ),
)

_EXACT: dict[str, Metric] = {m.name: m for m in REGISTRY if not m.is_family}
_FAMILIES: tuple[Metric, ...] = tuple(m for m in REGISTRY if m.is_family)


class UnknownMetric(ValueError):
    """A metric name that is not registered (a bug in the writer or a stale run)."""


@lru_cache(maxsize=1024)
def _lookup(name: str) -> Metric | None:
    m = _EXACT.get(name)
    if m is not None:
        return m
    return next((f for f in _FAMILIES if fnmatch.fnmatchcase(name, f.name)), None)


def find(name: str) -> Metric | None:
    """The registry entry for `name` (exact or by family pattern), None if unregistered."""
    return _lookup(str(name))


def get(name: str) -> Metric:
    """The registry entry for `name`; raises UnknownMetric for an unregistered name."""
    m = _lookup(str(name))
    if m is None:
        raise UnknownMetric(f"metric {name!r} is not in harness/metrics.py: register it there")
    return m


def unit(name: str, default: str = "") -> str:
    """The unit of `name`; `default` for a name the registry does not know (older runs)."""
    m = _lookup(str(name))
    return m.unit if m is not None else default


_UNIT_OF: dict[str, str] = {m.name: m.unit for m in REGISTRY if not m.is_family}  # grows with family members


def check(name: str, value_unit: str | None) -> str:
    """The registered unit of `name`; raises if the name is unknown or `value_unit` disagrees.
    Called for every sample row, hence the plain dict on the common path."""
    u = _UNIT_OF.get(name)
    if u is None:
        u = _UNIT_OF[name] = get(name).unit
    if value_unit is not None and value_unit != u:
        raise UnknownMetric(f"metric {name!r} is registered in {u!r}, written in {value_unit!r}")
    return u


def names(**flags: bool) -> list[str]:
    """Exact metric names (families excluded) in declaration order whose flags match,
    e.g. names(fit=True) or names(table=True)."""
    return [m.name for m in REGISTRY if not m.is_family and all(getattr(m, k) == v for k, v in flags.items())]


def in_figure(figure: str) -> list[str]:
    """Metrics drawn in harness.plots figure `figure`, in declaration order."""
    return [m.name for m in REGISTRY if figure in m.figures]


def headlines() -> list[Metric]:
    """Metrics quoted in the report's findings, in declaration order."""
    return [m for m in REGISTRY if m.headline and not m.is_family]


def min_samples() -> dict[str, int]:
    """{metric: minimum samples per repetition} for metrics that need more than one."""
    return {m.name: m.min_samples for m in REGISTRY if m.min_samples > 1}


def _uses(m: Metric) -> str:
    out = [f"figure {f}" for f in m.figures]
    out += [w for w, on in (("table", m.table), ("fit", m.fit), ("comparison", m.compare)) if on]
    return ", ".join(out)


def markdown_table() -> str:
    """README's metric table: one row per metric (variants named in their `readme` row)."""
    lines = [
        "| metric | unit | what it is | split by | shown in | min samples |",
        "|---|---|---|---|---|---|",
    ]
    folded: dict[str, list[Metric]] = {}
    for m in REGISTRY:
        folded.setdefault(m.readme or m.name, []).append(m)
    for key, group in folded.items():
        head = next((m for m in group if m.name == key), group[0])
        extra = [m for m in group if m is not head]
        name = ", ".join(f"`{m.name}`" for m in [head] + extra)
        units = ", ".join(dict.fromkeys(m.unit for m in [head] + extra))
        what = head.what  # the row's own sentence covers its variants
        split = ", ".join(f"`{t}`" for t in head.split)
        cells = [
            name,
            units,
            what.replace("|", "\\|"),
            split,
            _uses(head),
            str(head.min_samples) if head.min_samples > 1 else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--markdown"]:
        print("usage: python -m harness.metrics --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
