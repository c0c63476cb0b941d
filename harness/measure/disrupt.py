"""Dataplane disruption during a sync: what clients of existing Services see while the dataplane is
reprogrammed.

`Prober` runs harness.measure.disrupt_prober in the client namespace (its own process: new
connections at a fixed open-loop rate to Services that exist before and after the sync, plus a
few keepalive connections sending requests). `measure_during` starts it, waits `window_s`
(phase before), runs the sync (phase during, from the sync's own perf_counter_ns timestamps),
waits `window_s` again (phase after) and turns the records into rows, each tagged with the sync
kind (full / cold / add / update / delete) and the phase:

- ``disrupt_connect_us``: every new-connection attempt (a failed one: value = timeout,
  timed_out=True, its reason in ``error``);
- ``disrupt_failed``: one row per failed attempt (value 1, the reason in ``error``: refused /
  reset / unreachable / timeout), so failure counts are sums and the rate is failed / attempts;
- ``disrupt_request_us``: every request on the keepalive connections (failures as above);
- ``disrupt_gap_ms``: per phase, the longest interval with no successful new connection;
- ``disrupt_sync_us``: the sync observed, on the same time axis.

``seq`` of the attempt and request rows is the start time in us since probing began (the
timeline's x axis), the failure reason is the ``error`` tag.

A phase's attempts are those *started* inside it. Saturation: the open-loop schedule is never
thinned; when the prober starts attempts late (the client, not the dataplane, limiting) the
result says so and the caller flags the point ``saturated``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.measure.agent import spawn_module
from harness.samples import PointContext

PHASES = ("before", "during", "after")
# the prober is saturated when more than this share of its attempts started later than LATE_US
LATE_SHARE, LATE_US = 0.01, 10_000.0


class ProberError(RuntimeError):
    pass


def phase_of(t_ns: int, t_start_ns: int, t_end_ns: int) -> str:
    """before / during / after of a time against the sync's start and end."""
    if t_ns < t_start_ns:
        return "before"
    return "during" if t_ns <= t_end_ns else "after"


def longest_gap_ms(success_ns: Sequence[int], lo_ns: int, hi_ns: int) -> float:
    """Longest interval inside [lo, hi] with no successful new connection (ms): the window's edges
    count as boundaries, so a window without any success is one gap as long as the window."""
    pts = sorted(t for t in success_ns if lo_ns <= t <= hi_ns)
    prev, gap = lo_ns, 0
    for t in pts + [hi_ns]:
        gap = max(gap, t - prev)
        prev = t
    return gap / 1e6


@dataclass
class Records:
    """What the prober recorded: attempts [t_ns, us, err, late_us], requests [t_ns, us, err]."""

    attempts: list[list] = field(default_factory=list)
    requests: list[list] = field(default_factory=list)
    t_first_ns: int = 0
    t_last_ns: int = 0

    def saturation(self) -> list[str]:
        """Reasons the prober itself fell behind its schedule (empty: it kept up)."""
        if not self.attempts:
            return ["no attempt recorded"]
        late = sum(1 for a in self.attempts if a[3] > LATE_US)
        if late > LATE_SHARE * len(self.attempts):
            return [f"{late} of {len(self.attempts)} attempts started > {LATE_US / 1000:.0f} ms late"]
        return []


def rows(
    rec: Records,
    ctx: PointContext,
    kind: str,
    t_start_ns: int,
    t_end_ns: int,
    lo_ns: int,
    hi_ns: int,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Rows of one sync (kind) observed from lo to hi, the sync itself from t_start to t_end."""
    out: list[dict[str, Any]] = []
    timeout_us = timeout_s * 1e6
    ok_times: dict[str, list[int]] = {ph: [] for ph in PHASES}
    for t, us, err, _late in sorted(rec.attempts):
        if not lo_ns <= t <= hi_ns:
            continue
        ph = phase_of(t, t_start_ns, t_end_ns)
        failed = bool(err)
        seq = (t - lo_ns) // 1000  # the attempt's start, us since probing began (the timeline's x)
        out.append(
            ctx.row(
                "disrupt_connect_us",
                timeout_us if failed else us,
                "us",
                seq=seq,
                timed_out=failed,
                sync=kind,
                phase=ph,
                error=err,
            )
        )
        if not failed:
            ok_times[ph].append(t)
        elif err != "pending":  # pending: still open when the prober stopped, not a failure
            out.append(ctx.row("disrupt_failed", 1, "count", seq=seq, sync=kind, phase=ph, error=err))
    for t, us, err in sorted(rec.requests):
        if lo_ns <= t <= hi_ns:
            out.append(
                ctx.row(
                    "disrupt_request_us",
                    timeout_us if err else us,
                    "us",
                    seq=(t - lo_ns) // 1000,
                    timed_out=bool(err),
                    sync=kind,
                    phase=phase_of(t, t_start_ns, t_end_ns),
                    error=err,
                )
            )
    bounds = {"before": (lo_ns, t_start_ns), "during": (t_start_ns, t_end_ns), "after": (t_end_ns, hi_ns)}
    # a gap that spans the sync's edges belongs to `during`: its bounds are the last success before
    # and the first after, so an outage straddling the start or the end is not cut in two
    all_ok = sorted(t for ph in PHASES for t in ok_times[ph])
    for ph in PHASES:
        a, b = bounds[ph]
        if ph == "during":
            a = max([t for t in all_ok if t < t_start_ns], default=lo_ns)
            b = min([t for t in all_ok if t > t_end_ns], default=hi_ns)
        out.append(ctx.row("disrupt_gap_ms", longest_gap_ms(all_ok, a, b), "ms", sync=kind, phase=ph))
    # the sync itself on the same axis: seq = its start, value = its length (us)
    out.append(
        ctx.row(
            "disrupt_sync_us",
            (t_end_ns - t_start_ns) / 1000,
            "us",
            seq=(t_start_ns - lo_ns) // 1000,
            sync=kind,
            phase="during",
        )
    )
    return out


class Prober:
    """harness.measure.disrupt_prober inside namespace `ns`, probing `targets` [(ip, port), ...]."""

    def __init__(
        self,
        ns: str | None,
        targets: Sequence[tuple[str, int]],
        *,
        rate: float,
        keepalive: int,
        timeout: float,
        python: str | None = None,
    ):
        self.timeout = timeout
        self.proc = spawn_module(ns, "harness.measure.disrupt_prober", python)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        cfg = {
            "targets": [list(t) for t in targets],
            "rate": rate,
            "keepalive": keepalive,
            "timeout": timeout,
        }
        self._stdin.write(json.dumps(cfg) + "\n")
        self._stdin.flush()
        rep = self._reply()
        self.t_running_ns: int = rep["t_ns"]

    def _reply(self) -> dict:
        line = self._stdout.readline()
        if not line:
            self.proc.wait(timeout=5)
            err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
            raise ProberError(f"disruption prober exited ({self.proc.returncode}): {err}")
        return json.loads(line)

    def stop(self) -> Records:
        """Stop probing -> everything recorded."""
        self._stdin.write("stop\n")
        self._stdin.flush()
        try:
            rep = self._reply()
        finally:
            self.close()
        return Records(rep["attempts"], rep["requests"], rep["t_first_ns"], rep["t_last_ns"])

    def close(self) -> None:
        p = self.proc
        for f in (p.stdin, p.stdout, p.stderr):
            if f is None:
                continue
            try:
                f.close()
            except OSError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Observed:
    rows: list[dict[str, Any]]
    sync_s: float
    saturated: list[str]
    attempts: int
    call_s: float = 0.0  # the sync call's own length (sync_s: the sync's, when it reported its span)


def measure_during(
    ns: str | None,
    targets: Sequence[tuple[str, int]],
    sync: Callable[[], tuple[int, int] | None],
    ctx: PointContext,
    kind: str,
    *,
    rate: float,
    keepalive: int,
    window_s: float,
    timeout: float,
    prepare: Callable[[], None] | None = None,
    start_prober: Callable[..., Any] | None = None,
) -> Observed:
    """Probe `targets` for window_s, run `sync()`, probe window_s more -> rows tagged sync=kind.
    The phases are split at the sync's own start and end when `sync()` returns them
    (perf_counter_ns: e.g. kube-proxy's sync after the API call that asked for it), else at the
    call's. `prepare` runs before the prober starts (not observed: e.g. emptying the dataplane).
    `start_prober(ns, targets, rate=, keepalive=, timeout=)` makes the prober (default `Prober`);
    one in another kernel has `offset_ns` (its clock - ours), by which our times map into its."""
    if prepare is not None:
        prepare()
    prober = (start_prober or Prober)(ns, targets, rate=rate, keepalive=keepalive, timeout=timeout)
    off = getattr(prober, "offset_ns", 0)
    try:
        time.sleep(window_s)
        c0 = time.perf_counter_ns()
        span = sync()
        c1 = time.perf_counter_ns()
        t0, t1 = span or (c0, c1)
        time.sleep(window_s)
        hi = time.perf_counter_ns()
        time.sleep(timeout)  # every attempt started before `hi` resolves (connects or times out)
    except BaseException:
        prober.close()
        raise
    rec = prober.stop()
    out = rows(rec, ctx, kind, t0 + off, t1 + off, prober.t_running_ns, hi + off, timeout)
    return Observed(out, (t1 - t0) / 1e9, rec.saturation(), len(rec.attempts), (c1 - c0) / 1e9)
