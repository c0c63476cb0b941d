"""Terminal progress for a run: the current step, elapsed time and an ETA (rich)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class PlanETAColumn(ProgressColumn):
    """Time left by the plan's cost model, refined after every point (runner "eta" events)."""

    def render(self, task) -> Text:
        end = task.fields.get("plan_end")
        if end is None:
            return Text("-:--:--")
        left = max(0, int(end - time.monotonic()))
        return Text(f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}", style="progress.remaining")


class ProgressView:
    """Turns worker events into one progress bar over the run's points, plus one line per point."""

    def __init__(self, run_dir: Path, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.run_dir = run_dir
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            PlanETAColumn(),
            console=self.console,
            transient=False,
        )
        self.task: TaskID | None = None  # set by __enter__
        self.current = ""

    def __enter__(self):
        self.console.print(f"run folder: {self.run_dir}")
        self.progress.start()
        self.task = self.progress.add_task("planning", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def _task(self) -> TaskID:
        assert self.task is not None, "ProgressView is used as a context manager"
        return self.task

    def on_event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "plan":
            self.progress.update(self._task(), total=ev["total"], completed=ev.get("done", 0))
        elif kind == "point_start":
            rel = f" {ev['kube_proxy_version']}" if ev.get("kube_proxy_version") else ""
            self.current = f"{ev['kernel']} {ev['mode']}{rel} n={ev['n_services']} rep {ev['rep']}"
            self.progress.update(self._task(), description=self.current)
        elif kind == "phase":
            self.progress.update(self._task(), description=f"{self.current}: {ev['phase']}")
        elif kind == "point_done":
            self.progress.advance(self._task())
            style = {"ok": "green", "invalid": "yellow"}.get(ev["status"], "red")
            extra = f" ({ev['error']})" if ev.get("error") else ""
            self.console.print(
                f"[{style}]{ev['status']:>7}[/] {ev['point_id']} in {ev.get('seconds', 0):.1f} s{extra}"
            )
        elif kind == "log":
            self.console.print(f"  {ev['message']}")
        elif kind == "eta":
            self.progress.update(self._task(), plan_end=time.monotonic() + ev["remaining_s"])
        elif kind == "plan_table":
            self.console.print(ev["text"], markup=False, highlight=False, soft_wrap=True)
        elif kind == "validation_table":
            self.console.print(ev["text"])
