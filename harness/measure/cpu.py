"""CPU accounting for a measurement phase, from /proc/stat deltas (standard library only).

What /proc/stat covers depends on where the worker runs, and the rows mean different things:
- inside a UML guest it is the guest's ONE virtual CPU: everything the guest kernel and its
  processes did (dataplane softirq work, nginx, the load generator), and nothing else;
- on the host kernel it is the WHOLE machine (all CPUs, all processes, including other users of
  the machine): /proc/stat is not namespaced. cpu_busy_pct is then relative to all CPUs
  (100 = every CPU busy for the whole phase).

Rows (tags as given, typically keepalive): cpu_user_s, cpu_system_s, cpu_softirq_s, cpu_irq_s
(CPU-seconds summed over CPUs; user includes nice), cpu_busy_pct (all non-idle, non-iowait
time / total time, in percent of all CPUs), cpu_wall_s (the phase's wall time), cpu_count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from harness.samples import PointContext

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSnapshot:
    t_ns: int
    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int
    ncpu: int

    @property
    def total(self) -> int:
        return (
            self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
        )


def snapshot(path: str = "/proc/stat") -> CpuSnapshot:
    t = time.perf_counter_ns()
    with open(path) as f:
        lines = f.read().splitlines()
    f0 = lines[0].split()
    assert f0[0] == "cpu", f"unexpected {path}"
    v = [int(x) for x in f0[1:9]] + [0] * max(0, 9 - len(f0))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    ncpu = sum(1 for ln in lines[1:] if ln.startswith("cpu") and ln[3:4].isdigit())
    return CpuSnapshot(t, user, nice, system, idle, iowait, irq, softirq, steal, ncpu=max(1, ncpu))


def delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU-seconds per class and busy percent between two snapshots."""
    d = {
        k: (getattr(after, k) - getattr(before, k)) / _TICK
        for k in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    }
    total = sum(d.values())
    busy = total - d["idle"] - d["iowait"]
    return {
        "user_s": d["user"] + d["nice"],
        "system_s": d["system"],
        "softirq_s": d["softirq"],
        "irq_s": d["irq"],
        "busy_pct": 100.0 * busy / total if total > 0 else 0.0,
        "wall_s": (after.t_ns - before.t_ns) / 1e9,
        "ncpu": float(after.ncpu),
    }


def cpu_rows(ctx: PointContext, before: CpuSnapshot, after: CpuSnapshot, **tags: Any) -> list[dict[str, Any]]:
    d = delta(before, after)
    return [
        ctx.row("cpu_user_s", d["user_s"], "s", **tags),
        ctx.row("cpu_system_s", d["system_s"], "s", **tags),
        ctx.row("cpu_softirq_s", d["softirq_s"], "s", **tags),
        ctx.row("cpu_irq_s", d["irq_s"], "s", **tags),
        ctx.row("cpu_busy_pct", d["busy_pct"], "pct", **tags),
        ctx.row("cpu_wall_s", d["wall_s"], "s", **tags),
        ctx.row("cpu_count", d["ncpu"], "count", **tags),
    ]


class CpuPhase:
    """``with CpuPhase() as ph: ...`` then ``ph.rows(ctx, keepalive=True)``."""

    def __enter__(self) -> CpuPhase:
        self.before = snapshot()
        self.after: CpuSnapshot | None = None
        return self

    def __exit__(self, *exc) -> None:
        self.after = snapshot()

    def rows(self, ctx: PointContext, **tags: Any) -> list[dict[str, Any]]:
        if self.after is None:
            raise RuntimeError("phase still running")
        return cpu_rows(ctx, self.before, self.after, **tags)
