"""The sample row: one measured value, tidy long format, shared by every target and measurement.

Workers (which may run inside a UML guest, where importing pandas costs seconds) write rows as
JSON lines with only the standard library; results.py turns them into Parquet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from harness import metrics

# Column order of samples.parquet. Tags are strings ("" when not applicable) so that the table
# stays tidy and filterable; value is always a float in the stated unit.
COLUMNS: tuple[str, ...] = (
    "run_id",
    "point_id",
    "target",
    "kernel",
    "mode",
    "kube_proxy_version",
    "iptables_backend",
    "n_services",
    "endpoints",
    "rep",
    "metric",
    "value",
    "unit",
    "seq",
    "position",
    "keepalive",
    "change",
    "path",
    "timed_out",
    "error",
    "sync",
    "phase",
)

# error: "" for a good sample; otherwise why it failed ("timeout", "refused", "unreachable", an
# errno name, an HTTP status ...). A failed sample keeps its row with value = the timeout
# (censored: "not served within the timeout") and timed_out = true.
# sync / phase: disruption rows (harness.measure.disrupt): the sync kind observed and the phase
# (before / during / after it) an attempt started in
TAGS = ("position", "keepalive", "change", "path", "error", "sync", "phase")


@dataclass
class PointContext:
    """What every row of one measured point carries."""

    run_id: str
    point_id: str
    target: str
    kernel: str
    mode: str
    iptables_backend: str
    n_services: int
    endpoints: int
    rep: int
    # the point's kube-proxy release ("": the run's single release, read from its metadata)
    kube_proxy_version: str = ""

    def row(
        self,
        metric: str,
        value: float,
        unit: str | None = None,
        *,
        seq: int = 0,
        timed_out: bool = False,
        **tags: Any,
    ) -> dict[str, Any]:
        """One sample row. The unit is the metric's registered one (harness.metrics); an
        unregistered metric or a `unit` that disagrees with the registry raises ValueError."""
        unit = metrics.check(metric, unit)
        unknown = set(tags) - set(TAGS)
        if unknown:
            raise ValueError(f"unknown sample tags: {sorted(unknown)}")
        r = {
            "run_id": self.run_id,
            "point_id": self.point_id,
            "target": self.target,
            "kernel": self.kernel,
            "mode": self.mode,
            "kube_proxy_version": self.kube_proxy_version,
            "iptables_backend": self.iptables_backend,
            "n_services": self.n_services,
            "endpoints": self.endpoints,
            "rep": self.rep,
            "metric": metric,
            "value": float(value),
            "unit": unit,
            "seq": int(seq),
            "timed_out": bool(timed_out),
        }
        for t in TAGS:
            v = tags.get(t, "")
            r[t] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return r


@dataclass
class SampleWriter:
    """Appends rows to a JSON-lines file; flushes so a killed run keeps what was measured."""

    fh: IO[str]
    count: int = field(default=0)

    def write(self, row: dict[str, Any]) -> None:
        self.fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.count += 1

    def extend(self, rows) -> None:
        for r in rows:
            self.write(r)
        self.fh.flush()
