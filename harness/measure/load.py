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

``measure_loads`` runs several phases (keepalive off, then on) from one worker process (one
``import locust``). With ``min_duration`` a phase is adaptive: ``duration`` is its cap, and it
stops once the order-statistic 95% CI of the median of request_us and request_corrected_us is
within +-5% (harness.measure.adaptive.load_stop_rule), never before min_duration; its summary's
``duration_s`` is the length it ran (achieved_rps counts over it) and ``adaptive`` the samples
spent and the CI reached per metric.
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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = _repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def worker_args(
    *,
    users: int,
    rate: float,
    duration: float,
    timeout: float,
    keepalives: Sequence[bool],
    seed: int = 0,
    keepalive_targets: int = 1,
    min_duration: float | None = None,
) -> list[str]:
    """The load worker's command line for the phases of `keepalives` (in that order)."""
    argv = [
        "--users",
        str(users),
        "--rate",
        repr(float(rate)),
        "--duration",
        repr(float(duration)),
        "--timeout",
        repr(float(timeout)),
        "--keepalive",
        ",".join("true" if k else "false" for k in keepalives),
        "--keepalive-targets",
        str(keepalive_targets),
        "--seed",
        str(seed),
    ]
    if min_duration is not None:
        argv += ["--min-duration", repr(float(min_duration))]
    return argv


def parse_output(lines: Sequence[str], kas: Sequence[bool]) -> list[tuple[list[list], dict[str, Any]]]:
    """The worker's lines -> [(records, summary)] per phase of `kas`; LoadError on its error line
    or a phase without a summary."""
    records: dict[bool, list[list]] = {k: [] for k in kas}
    summaries: dict[bool, dict[str, Any]] = {}
    for line in lines:
        if line.startswith('{"t":"req"'):
            obj = json.loads(line)
            records[bool(obj.get("k", kas[0]))].append(obj["r"])
        elif line.strip():
            obj = json.loads(line)
            if obj.get("t") == "summary":
                summaries[bool(obj.get("keepalive", kas[0]))] = obj
            elif obj.get("t") == "error":
                raise LoadError(obj["error"])
    if len(summaries) != len(kas):
        raise LoadError(f"load worker: {len(summaries)} of {len(kas)} phase summaries")
    return [(records[k], summaries[k]) for k in kas]


def run_worker(
    ns: str | None,
    targets: Sequence[tuple[str, int]],
    *,
    keepalive: bool | Sequence[bool],
    python: str | None = None,
    start_timeout: float = 60.0,
    **kw: Any,
) -> list[tuple[list[list], dict[str, Any]]]:
    """Run the load worker once, one phase per keepalive value (in that order) ->
    [(records, summary)] per phase, as the worker printed them. min_duration: adaptive phases
    (duration is then the cap)."""
    kas = [keepalive] if isinstance(keepalive, bool) else list(keepalive)
    argv = ([] if ns is None else ["ip", "netns", "exec", ns]) + [
        python or sys.executable,
        "-m",
        "harness.measure.load_worker",
        *worker_args(keepalives=kas, **kw),
    ]
    p = subprocess.run(
        argv,
        input=json.dumps([[ip, int(port)] for ip, port in targets]),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=start_timeout + len(kas) * (kw["duration"] + kw["timeout"] + 30),
    )
    try:
        phases = parse_output(p.stdout.splitlines(), kas)
    except LoadError as e:
        raise LoadError(f"{e} (exit {p.returncode}): {p.stderr.strip()[-2000:]}") from None
    if p.returncode != 0:
        raise LoadError(f"load worker failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return phases


class LoadGenerator:
    """One load-generator process (``load_worker --serve``) in namespace `ns`, kept for many load
    phases: ``import locust`` (~3.4 s inside the UML guest) is paid once, not per point. Between
    requests it waits in a blocking read. Started at first use; close() ends it (its stdin's EOF:
    it also ends when the process holding it dies)."""

    def __init__(self, ns: str | None, python: str | None = None, start_timeout: float = 60.0):
        self.ns, self.start_timeout = ns, start_timeout
        self.argv = ([] if ns is None else ["ip", "netns", "exec", ns]) + [
            python or sys.executable,
            "-m",
            "harness.measure.load_worker",
            "--serve",
        ]
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._err: Any = None
        self.requests = 0

    def _start(self) -> subprocess.Popen:
        import tempfile

        self.close()
        self._err = tempfile.TemporaryFile()
        self._buf = b""
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=_env()
        )
        return self.proc

    def _stderr(self) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip()[-2000:]

    def _readline(self, proc: subprocess.Popen, deadline: float) -> str | None:
        """One line of the worker's stdout; None at EOF or past the deadline."""
        import select
        import time

        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def run(
        self, targets: Sequence[tuple[str, int]], keepalives: Sequence[bool], **kw: Any
    ) -> list[tuple[list[list], dict[str, Any]]]:
        """The phases of `keepalives` against `targets` -> [(records, summary)] per phase."""
        import time

        kas = list(keepalives)
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None
        req = {
            "args": worker_args(keepalives=kas, **kw),
            "targets": [[ip, int(port)] for ip, port in targets],
        }
        try:
            proc.stdin.write((json.dumps(req) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            raise LoadError(f"load generator exited: {self._stderr()}") from None
        self.requests += 1
        deadline = time.monotonic() + self.start_timeout + len(kas) * (kw["duration"] + kw["timeout"] + 30)
        lines: list[str] = []
        while True:
            line = self._readline(proc, deadline)
            if line is None:
                why = "exited" if proc.poll() is not None else "did not answer in time"
                err = self._stderr()
                self.close()
                raise LoadError(f"load generator {why}: {err}")
            if line.startswith('{"t":"done"'):
                break
            lines.append(line)
        return parse_output(lines, kas)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._err is not None:
            self._err.close()
            self._err = None

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    keepalive: bool,
    **kw: Any,
) -> LoadResult:
    """One load phase against the ClusterIPs of `services` (requests pick one uniformly at random)."""
    return measure_loads(ns, ctx, services, keepalives=[keepalive], **kw)[0]


def measure_loads(
    ns: str | None,
    ctx: PointContext,
    services: Sequence[Service],
    *,
    keepalives: Sequence[bool],
    users: int,
    rate: float,
    duration: float,
    timeout: float,
    seed: int = 0,
    keepalive_targets: int = 1,
    python: str | None = None,
    cpu: bool = True,
    min_duration: float | None = None,
    generator: LoadGenerator | None = None,
) -> list[LoadResult]:
    """The load phases of `keepalives`, in order, from one load-generator process (one locust
    import; `generator`: a kept one, in namespace `ns`). min_duration: each phase stops once its
    median request latency's 95% CI is within +-5% (duration is the cap), not before min_duration."""
    targets = [(s.cluster_ip, s.ports[0].port) for s in services]
    if not targets:
        raise LoadError("no Services to load")
    kw: dict[str, Any] = dict(
        users=users,
        rate=rate,
        duration=duration,
        timeout=timeout,
        seed=seed,
        keepalive_targets=keepalive_targets,
        min_duration=min_duration,
    )
    if generator is not None:
        phases = generator.run(targets, list(keepalives), **kw)
    else:
        phases = run_worker(ns, targets, keepalive=list(keepalives), python=python, **kw)
    return [
        LoadResult(*_rows(ctx, records, summary, ka, timeout, cpu))
        for ka, (records, summary) in zip(keepalives, phases, strict=True)
    ]


def adaptive_summary(res: LoadResult) -> dict[str, dict]:
    """The samples a phase spent and the CI it reached, per latency metric, keyed like the other
    adaptive metrics of a point status ('request_us keepalive=false'); {} for a fixed phase."""
    ka = "true" if res.summary.get("keepalive") else "false"
    out = {}
    for metric, spent in (res.summary.get("adaptive") or {}).items():
        out[f"{metric} keepalive={ka}"] = {
            **spent,
            "duration_s": round(res.summary["duration_s"], 2),
            "duration_cap_s": res.summary.get("duration_cap_s"),
        }
    return out


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
