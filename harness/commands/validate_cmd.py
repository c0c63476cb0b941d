"""`kpbench validate`: the functional validation matrix (harness.validate) for every mode, on the
kernels the target runs them on, printed as one table; exit status 1 when any cell fails.

For the lab target the matrix runs through the same worker mechanism as `kpbench run`
(`python -m harness.pointloop JOB.json`, on the host or inside the UML guest) with a job flagged
``"validate_only": true``: the worker builds the lab, validates each mode and exits. The job file,
the worker log and validation-<kernel>.json stay in a folder `validate-<stamp>-<id>` under the
results directory. Other targets validate through a `validate(scenario)` method when they have one.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.commands.privileges import require_root
from harness.commands.scenario_args import add_scenario_arguments, scenario_from_args
from harness.pointloop.worker import validation_key
from harness.targets.lab import run_host_worker

NAME = "validate"
HELP = "run the functional traffic matrix for each mode"

EventSink = Callable[[dict], None]


def _work_dir(base: Path | None = None) -> Path:
    from harness.runner import default_out

    base = Path(base) if base else default_out()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    d = base / f"validate-{stamp}-{secrets.token_hex(3)}"
    (d / "points").mkdir(parents=True)
    return d


def validation_job(scenario, kernel: str, modes: list[str], work_dir: Path, tag: str | None = None) -> dict:
    """A worker job that validates `modes` in `kernel` and measures nothing: each mode once per
    release of a version sweep (each release renders its own ruleset family)."""
    resolved = scenario.resolved() if hasattr(scenario, "resolved") else dict(scenario)
    releases = _swept_releases(scenario)
    return {
        "run_id": work_dir.name,
        "run_dir": str(work_dir),
        "kernel": kernel,
        "tag": tag or "v" + secrets.token_hex(2),
        "scenario": resolved,
        "target": "lab",
        "validate_only": True,
        "points": [
            {
                "point_id": f"{kernel}-{m}" + (f"-{r}" if r else "") + "-validate",
                "kernel": kernel,
                "mode": m,
                "n_services": 0,
                "rep": 0,
                "order": i,
                "kube_proxy_version": r,
            }
            for i, (r, m) in enumerate((r, m) for r in releases for m in modes)
        ],
    }


def _swept_releases(scenario) -> list[str]:
    """The releases of a version sweep, oldest first; [""] (the scenario's one release) otherwise."""
    releases = scenario.releases() if hasattr(scenario, "releases") else []
    return list(releases) if len(releases) > 1 else [""]


def validate_on_kernel(
    scenario, kernel: str, modes: list[str], work_dir: Path, on_event: EventSink | None = None
) -> dict[str, Any]:
    """Run a validate-only worker in `kernel` ("host" | "uml"); -> {validation_key(...): result},
    one per mode, and per release of a version sweep.

    A mode (or release) whose validation never reported (the worker died) gets a failed result
    naming why.
    """
    job = validation_job(scenario, kernel, modes, work_dir)
    jobs = work_dir / ".jobs"
    jobs.mkdir(exist_ok=True)
    job_path = jobs / f"validate-{kernel}.json"
    job_path.write_text(json.dumps(job, indent=1))
    results: dict[str, Any] = {}
    fatal: list[str] = []
    label = [kernel]

    def on_line(line: str) -> None:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            return
        if ev.get("event") == "validation":
            results[ev["key"]] = ev["result"]
        elif ev.get("event") == "kernel":
            label[0] = ev.get("label") or ev.get("name", kernel)
        elif ev.get("event") == "fatal":
            fatal.append(str(ev.get("error")))
        if on_event:
            on_event(ev)

    log_path = work_dir / f"worker-{kernel}.log"
    if kernel == "host":
        argv = [sys.executable, "-m", "harness.pointloop", str(job_path)]
        rc = run_host_worker(argv, log_path, on_line, job["tag"])
    else:
        from harness.lab import uml

        res = uml.run_guest(
            work_dir,
            uml.default_command(job_path),
            on_line=on_line,
            mem=getattr(getattr(scenario, "lab", None), "uml_mem", "4G"),
            name=f"validate-{kernel}",
        )
        with log_path.open("a") as log:
            log.write(
                f"guest exit {res.status} after {res.elapsed_s:.1f} s (boot {res.boot_s} s)\n"
                f"--- guest stderr ---\n{res.stderr_tail}\n--- guest console ---\n{res.console_tail}\n"
            )
        rc = res.status
    for p in job["points"]:
        m, release = p["mode"], p["kube_proxy_version"]
        key = validation_key(label[0], m, release)
        if key not in results:
            what = f"{m} {release}" if release else m
            why = f"the {kernel} worker exited with status {rc} before validating {what}"
            if fatal:
                why = fatal[0]
            results[key] = {
                "mode": m,
                "passed": False,
                "failed_cells": ["not validated"],
                "cells": [],
                "no_endpoints_behaviour": None,
                "error": f"{why} (see {log_path})",
            }
    return results


def run_validation(scenario, target, *, out: Path | None = None, file=None) -> int:
    """`kpbench validate`: validate every mode of `scenario` on `target`, print the table; 0 | 1."""
    from harness.validate import format_table

    file = file or sys.stdout
    if getattr(target, "name", None) == "lab":
        plan = target.plan(scenario)  # mode -> kernels
        by_kernel: dict[str, list[str]] = {}
        for mode, kernels in plan.items():
            for k in kernels:
                by_kernel.setdefault(k, []).append(mode)
        work = _work_dir(out)
        results: dict[str, Any] = {}
        for kernel, modes in by_kernel.items():
            print(f"validating {', '.join(modes)} on the {kernel} kernel ...", file=sys.stderr)
            results.update(validate_on_kernel(scenario, kernel, modes, work))
        (work / "validation.json").write_text(json.dumps(results, indent=1, default=str))
    elif hasattr(target, "validate"):
        results = target.validate(scenario)
        work = None
    else:
        print(
            f"kpbench: validation is not available for the {getattr(target, 'name', target)} target",
            file=sys.stderr,
        )
        return 2
    color = hasattr(file, "isatty") and file.isatty()
    import shutil

    file.write(
        format_table(results, color=color, width=max(120, shutil.get_terminal_size((200, 40)).columns))
    )
    failed = {k: r for k, r in results.items() if not r.get("passed")}
    for k, r in failed.items():
        if r.get("error"):
            print(f"{k}: {r['error']}", file=file)
        for c in r.get("cells", []):
            if not c.get("passed"):
                print(f"{k}: FAIL {c['path']} ({c.get('from')} -> {c.get('to')}): {c.get('note')}", file=file)
    if work is not None:
        print(f"validation details: {work / 'validation.json'}", file=file)
    return 1 if failed or not results else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_scenario_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Validate the scenario's modes on its target; 0 when every cell passes, 1 otherwise."""
    from harness.targets import make_target

    scenario = scenario_from_args(args)
    require_root("kpbench validate")
    target = make_target(scenario, args)
    target.preflight(scenario)
    return run_validation(scenario, target)
