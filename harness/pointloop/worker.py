"""The worker process: runs a job file's points inside one kernel (the host's, or a UML guest's).

    python -m harness.pointloop JOB.json                 (lab target)
    python -m harness.targets.local_worker JOB.json      (local target)

The job file holds the run's identity, its points and the scenario as the dumped pydantic model,
validated again here (the typed Scenario crosses the process boundary, not a dict). Events go to
stdout as JSON lines. Inside UML every import is slow: only the standard library, pydantic,
pyroute2 and light harness modules are imported (no pandas).
"""

from __future__ import annotations

import json
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.jsonfile import write_json
from harness.lab.netns import LabError
from harness.pointloop.loop import JobPoint, PointLoop
from harness.scenario import Scenario

_out = sys.stdout


def emit(event: str, **fields: Any) -> None:
    """One event as a JSON line on stdout (the runner reads them)."""
    emit_event({"event": event, **fields})


def emit_event(ev: dict) -> None:
    _out.write(json.dumps(ev, default=str) + "\n")
    _out.flush()


def kernel_label(kernel: str) -> str:
    return f"{kernel}-{platform.release()}"


def validation_key(kernel: str, mode: str, release: str = "") -> str:
    """The key of one validation result: `<kernel label>/<mode>`, `/<release>` in a version sweep."""
    return f"{kernel}/{mode}" + (f"/{release}" if release else "")


class Job:
    """A job file, read and validated: the scenario as a Scenario, the points as JobPoints."""

    def __init__(self, data: dict):
        self.data = data
        self.scenario = Scenario.model_validate(data["scenario"])
        self.points = [JobPoint(**p) for p in data["points"]]
        self.run_id: str = data["run_id"]
        self.run_dir = Path(data["run_dir"])
        self.kernel: str = data["kernel"]  # the kernel kind: "host" | "uml" (lab), "local" | "local-uml"
        self.tag: str = data["tag"]
        self.validate_only = bool(data.get("validate_only"))

    def get(self, key: str, default: Any = None) -> Any:
        """A target-specific job key (e.g. local_cluster)."""
        return self.data.get(key, default)


def run_validate_only(target, job: Job) -> int:
    """Job flag "validate_only": build the lab and run the validation matrix once per mode of the
    job's points, and per release when the points name releases (a version sweep: each release's
    ruleset family). Each result is emitted as a "validation" event and all are written to
    RUN/validation-<kernel>.json."""
    checks = list(dict.fromkeys((p.mode, p.kube_proxy_version) for p in job.points))
    first = {(p.mode, p.kube_proxy_version): p for p in reversed(job.points)}
    target.start()
    results: dict[str, Any] = {}
    for mode, release in checks:
        emit("phase", point_id=f"validate-{mode}" + (f"-{release}" if release else ""), phase="validate")
        key = validation_key(target.kernel, mode, release)
        try:
            use_point = getattr(target, "use_point", None)  # the point's release: its ruleset family
            if use_point is not None:
                use_point(first[(mode, release)])
            res = target.validation_matrix(mode)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - recorded as a crashed validation
            res = {
                "mode": mode,
                "passed": False,
                "failed_cells": ["validation crashed"],
                "cells": [],
                "no_endpoints_behaviour": None,
                "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                "traceback": traceback.format_exc(limit=8),
            }
            emit("validation", key=key, result=res)
        results[key] = res
    write_json(job.run_dir / f"validation-{job.kernel}.json", results)
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None, target_class: Callable[[Job], Any]) -> int:
    """Run the job file argv[0] on `target_class(job)` (a PointTarget)."""
    argv = sys.argv[1:] if argv is None else argv
    job = Job(json.loads(Path(argv[0]).read_text()))
    signal.signal(signal.SIGTERM, _terminate)
    target = target_class(job)
    try:
        if job.validate_only:
            return run_validate_only(target, job)
        t_setup = time.monotonic()
        target.start()
        setup_s = round(time.monotonic() - t_setup, 2)
        PointLoop(target, job.scenario, job.run_dir, emit_event).run(job.points, setup_s=setup_s)
        return 0
    except KeyboardInterrupt:
        emit("log", message="worker interrupted; cleaning up")
        return 130
    except LabError as e:
        emit("fatal", error=str(e))
        return 3
    finally:
        target.stop()
