"""Request latency under load: runs harness.measure.load_worker (locust) in the client namespace.

The worker process owns locust (``import locust`` gevent-patches a process, so it is never
imported here, in the agent, or in the lab worker). This module builds its arguments, reads its
per-request records and turns them into rows (tag keepalive=true|false on every row):

- ``request_us``: end - actual start, per request (seq = the request's slot in the schedule);
- ``request_corrected_us``: end - intended start (open-loop schedule; shows coordinated
  omission: a stalled request delays the following ones of its user);
  a failed request (timeout, refused, reset, non-200) gives both rows with value = timeout (us)
  and timed_out=True;
- ``request_lateness_us``: actual start - intended start, per request (failed ones too): the load
  generator's own lateness, so a reader can tell the generator's delay from the dataplane's;
- summary: ``load_target_rps``, ``load_achieved_rps`` (requests started in the phase / duration),
  ``load_requests``, ``load_failures``, ``load_missed`` (intended but never started: the client
  fell behind), ``load_connections`` (TCP connections the client opened, setup included),
  ``load_client_cpu_pct`` (CPU of the locust process over the phase, % of one core);
- cpu_* rows over the phase (harness.measure.cpu; /proc/stat of this kernel).

``saturated`` (returned, for the point status): achieved < 95 % of target, or client CPU > 90 %.
The latencies are then the client's, not the dataplane's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.measure.cpu import CpuSnapshot, cpu_rows
from harness.model import Service
from harness.samples import PointContext

SATURATION_RATE = 0.95
SATURATION_CPU_PCT = 90.0


class LoadError(RuntimeError):
    pass


@dataclass
class LoadResult:
    rows: list[dict[str, Any]]
    saturated: bool
    summary: dict[str, Any]
    reasons: list[str] = field(default_factory=list)


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_worker(
    ns: str | None,
    targets: Sequence[tuple[str, int]],
    *,
    users: int,
    rate: float,
    duration: float,
    timeout: float,
    keepalive: bool,
    seed: int = 0,
    keepalive_targets: int = 1,
    python: str | None = None,
    start_timeout: float = 60.0,
) -> tuple[list[list], dict[str, Any]]:
    """Run the load worker once -> (records, summary) as the worker printed them."""
    env = dict(os.environ)
    root = _repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = ([] if ns is None else ["ip", "netns", "exec", ns]) + [
        python or sys.executable,
        "-m",
        "harness.measure.load_worker",
        "--users",
        str(users),
        "--rate",
        repr(float(rate)),
        "--duration",
        repr(float(duration)),
        "--timeout",
        repr(float(timeout)),
        "--keepalive",
        "true" if keepalive else "false",
        "--keepalive-targets",
        str(keepalive_targets),
        "--seed",
        str(seed),
    ]
    p = subprocess.run(
        argv,
        input=json.dumps([[ip, int(port)] for ip, port in targets]),
        capture_output=True,
        text=True,
        env=env,
        timeout=start_timeout + duration + timeout + 30,
    )
    records: list[list] = []
    summary: dict[str, Any] | None = None
    for line in p.stdout.splitlines():
        if line.startswith('{"t":"req"'):
            records.append(json.loads(line)["r"])
        elif line.strip():
            obj = json.loads(line)
            if obj.get("t") == "summary":
                summary = obj
            elif obj.get("t") == "error":
                raise LoadError(obj["error"])
    if p.returncode != 0 or summary is None:
        raise LoadError(f"load worker failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return records, summary


def saturation(summary: dict[str, Any]) -> list[str]:
    """Reasons the client, not the dataplane, limited the phase (empty: not saturated)."""
    why = []
    if summary["achieved_rps"] < SATURATION_RATE * summary["target_rps"]:
        why.append(
            f"achieved {summary['achieved_rps']:.1f}/s < {SATURATION_RATE:.0%} of "
            f"target {summary['target_rps']:.1f}/s"
        )
    if summary["client_cpu_pct"] > SATURATION_CPU_PCT:
        why.append(f"client CPU {summary['client_cpu_pct']:.0f}% > {SATURATION_CPU_PCT:.0f}%")
    return why


def measure_load(
    ns: str | None,
    ctx: PointContext,
    services: Sequence[Service],
    *,
    users: int,
    rate: float,
    duration: float,
    timeout: float,
    keepalive: bool,
    seed: int = 0,
    keepalive_targets: int = 1,
    python: str | None = None,
    cpu: bool = True,
) -> LoadResult:
    """One load phase against the ClusterIPs of `services` (requests pick one uniformly at random)."""
    targets = [(s.cluster_ip, s.ports[0].port) for s in services]
    if not targets:
        raise LoadError("no Services to load")
    records, summary = run_worker(
        ns,
        targets,
        users=users,
        rate=rate,
        duration=duration,
        timeout=timeout,
        keepalive=keepalive,
        seed=seed,
        keepalive_targets=keepalive_targets,
        python=python,
    )
    return LoadResult(*_rows(ctx, records, summary, keepalive, timeout, cpu))


def _rows(
    ctx: PointContext,
    records: list[list],
    summary: dict[str, Any],
    keepalive: bool,
    timeout: float,
    cpu: bool,
):
    rows: list[dict[str, Any]] = []
    t_us = timeout * 1e6
    for seq, _user, intended, start, end, ok, err, _new in sorted(records):
        rows.append(
            ctx.row(
                "request_lateness_us", max(0, start - intended) / 1000.0, "us", seq=seq, keepalive=keepalive
            )
        )
        if ok:
            rows.append(ctx.row("request_us", (end - start) / 1000.0, "us", seq=seq, keepalive=keepalive))
            rows.append(
                ctx.row("request_corrected_us", (end - intended) / 1000.0, "us", seq=seq, keepalive=keepalive)
            )
        else:
            why = str(err or "failed")[:80]
            rows.append(
                ctx.row("request_us", t_us, "us", seq=seq, keepalive=keepalive, timed_out=True, error=why)
            )
            rows.append(
                ctx.row(
                    "request_corrected_us",
                    t_us,
                    "us",
                    seq=seq,
                    keepalive=keepalive,
                    timed_out=True,
                    error=why,
                )
            )
    s = summary
    for metric, value, unit in (
        ("load_target_rps", s["target_rps"], "rps"),
        ("load_achieved_rps", s["achieved_rps"], "rps"),
        ("load_requests", s["requests"], "count"),
        ("load_failures", s["failures"], "count"),
        ("load_missed", s["missed"], "count"),
        ("load_connections", s["connections"], "count"),
        ("load_client_cpu_pct", s["client_cpu_pct"], "pct"),
    ):
        rows.append(ctx.row(metric, value, unit, keepalive=keepalive))
    if cpu:
        before, after = (CpuSnapshot(*v) for v in s["proc_stat"])
        rows.extend(cpu_rows(ctx, before, after, keepalive=keepalive))
    reasons = saturation(s)
    return rows, bool(reasons), s, reasons
