"""The scenario runner: plan the sweep, hand points to the target, keep the run folder readable.

A run folder (`results/<UTC timestamp>-<id>/`) is valid at every moment: metadata.json is
rewritten atomically after every point, each finished point is a file under points/, and a
killed run is continued with `kpbench run --resume DIR`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from harness import metadata as md
from harness.scenario import Scenario, ScenarioError, load_scenario

RESULTS_DIR = md.REPO / "results"
log = logging.getLogger("kpbench")


@dataclass(frozen=True)
class Point:
    """One cell of the sweep, measured in one kernel."""

    point_id: str
    kernel: str  # "host" | "uml" (lab); "local"/"cluster" targets use their own names
    mode: str
    n_services: int
    rep: int
    order: int


def plan_points(scenario: Scenario, kernel_plan: dict[str, list[str]]) -> list[Point]:
    """Service count x repetition x mode, modes interleaved and rotated per repetition.

    Rotating the mode order between repetitions keeps slow drift of the machine (thermal,
    background load) from looking like a mode effect.
    """
    points: list[Point] = []
    # a kernel plan may add a mode (iptables, measured on every kernel as the bridge between them)
    for n, rep, mode in scenario.sweep(extra_modes=list(kernel_plan)):
        for kernel in kernel_plan[mode]:
            points.append(Point(f"{kernel}-{mode}-{n}-r{rep}", kernel, mode, n, rep, len(points)))
    return points


def new_run_dir(base: Path | None = None) -> Path:
    base = Path(base) if base else RESULTS_DIR
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    d = base / f"{stamp}-{secrets.token_hex(3)}"
    (d / "points").mkdir(parents=True)
    return d


def finished_points(run_dir: Path) -> dict[str, dict]:
    """Point statuses already written by workers (ok, failed or invalid)."""
    out = {}
    for f in sorted((run_dir / "points").glob("*.json")):
        try:
            st = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out[st["point_id"]] = st
    return out


class Run:
    """One run folder and its metadata, updated as points finish."""

    def __init__(self, run_dir: Path, scenario: Scenario, meta: dict):
        self.dir = run_dir
        self.scenario = scenario
        self.meta = meta
        self.log_handler = logging.FileHandler(run_dir / "run.log")
        self.log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self.log_handler)
        log.setLevel(logging.INFO)

    @classmethod
    def create(cls, scenario: Scenario, out: Path | None = None) -> "Run":
        run_dir = new_run_dir(out)
        resolved = scenario.resolved()
        (run_dir / "scenario.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        meta = md.base_metadata(run_dir.name, resolved, scenario.target)
        run = cls(run_dir, scenario, meta)
        run.save()
        return run

    @classmethod
    def resume(cls, run_dir: Path) -> "Run":
        run_dir = Path(run_dir)
        if not (run_dir / "metadata.json").exists() or not (run_dir / "scenario.yaml").exists():
            raise ScenarioError(f"{run_dir}: not a kpbench run folder (no metadata.json / scenario.yaml)")
        meta = md.read_json(run_dir / "metadata.json")
        data = yaml.safe_load((run_dir / "scenario.yaml").read_text())
        scenario = load_scenario(data=data, source=str(run_dir / "scenario.yaml"))
        (run_dir / "points").mkdir(exist_ok=True)
        meta.setdefault("resumed", []).append(md.utcnow())
        return cls(run_dir, scenario, meta)

    def save(self) -> None:
        md.write_json(self.dir / "metadata.json", self.meta)

    def refresh_points(self, planned: list[Point]) -> dict[str, dict]:
        done = finished_points(self.dir)
        rows = []
        for p in planned:
            st = done.get(p.point_id)
            rows.append({**asdict(p), "status": st["status"] if st else "pending",
                         **({k: v for k, v in st.items() if k not in asdict(p) and k != "status"} if st else {})})
        self.meta["points"] = rows
        self.save()
        return done

    def close(self, status: str) -> None:
        self.meta["status"] = status
        self.meta["ended"] = md.utcnow()
        self.save()
        log.removeHandler(self.log_handler)
        self.log_handler.close()


def discard_partial(run_dir: Path, done: dict[str, dict]) -> None:
    """Samples of a point that never finished are removed so the point is measured again whole."""
    for f in (run_dir / "points").glob("*.jsonl"):
        if f.stem not in done:
            f.unlink()


EventSink = Callable[[dict], None]


def execute(run: Run, target, on_event: EventSink | None = None,
            merge: Callable[[Path], Any] | None = None) -> str:
    """Measure every pending point of `run` on `target`; returns the final run status.

    merge(run_dir), when given, merges the point files into the run's samples table before the
    run is closed (harness.results.merge_points; passed in: results sit above the runner)."""
    scenario = run.scenario
    t0 = time.monotonic()
    kernel_plan = target.plan(scenario)
    planned = plan_points(scenario, kernel_plan)
    run.meta["kernel_plan"] = kernel_plan
    env = target.environment(kernel_plan)
    run.meta["kernels"] = env.get("kernels", run.meta.get("kernels", []))
    run.meta["tools"] = env.get("tools", {})
    done = run.refresh_points(planned)
    discard_partial(run.dir, done)
    todo = [p for p in planned if p.point_id not in done]
    log.info("run %s: %d points planned, %d to do", run.dir.name, len(planned), len(todo))
    status = "incomplete"

    def sink(ev: dict) -> None:
        if ev.get("event") in ("point_done", "kernel"):
            if ev.get("event") == "kernel":
                kernels = {k["name"]: k for k in run.meta.get("kernels", [])}
                kernels[ev["name"]] = {k: v for k, v in ev.items() if k != "event"}
                run.meta["kernels"] = list(kernels.values())
            run.refresh_points(planned)
        if ev.get("event") == "validation":
            run.meta.setdefault("validation", {})[ev["key"]] = ev["result"]
            run.save()
        log.info("%s", json.dumps(ev, default=str))
        if on_event:
            on_event(ev)

    try:
        target.run_points(run, todo, sink)
        done = run.refresh_points(planned)
        status = "complete" if len(done) == len(planned) else "incomplete"
    except KeyboardInterrupt:
        status = "incomplete"
        log.warning("interrupted: %d of %d points finished", len(finished_points(run.dir)), len(planned))
        raise
    finally:
        run.refresh_points(planned)
        try:
            if merge is not None:
                merge(run.dir)
        except Exception as e:  # keep the point files; the merge can be redone by `kpbench report`
            log.error("merging samples failed: %s", e)
        run.meta["wall_s"] = round(run.meta.get("wall_s", 0) + time.monotonic() - t0, 1)
        run.close(status)
    return status


def default_out() -> Path:
    return Path(os.environ.get("KPBENCH_RESULTS", RESULTS_DIR))
