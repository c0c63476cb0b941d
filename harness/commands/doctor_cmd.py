"""`kpbench doctor`: per mode, which kernel can run it here and why not; tool versions."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from harness.lab import caps
from harness.lab.netns import LabError
from harness.modes import MODES, mode as mode_spec

NAME = "doctor"
HELP = "what each mode needs and whether this machine has it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    return doctor()


def doctor(console: Console | None = None) -> int:
    console = console or Console()
    if os.geteuid() != 0:
        console.print("[red]not root[/]: the lab needs root for network namespaces (run with sudo)")
        return 2
    kernels: dict[str, dict | None] = {"host": caps.host_caps()}
    uml_note = ""
    if caps.uml_available():
        try:
            kernels["uml"] = caps.uml_caps()
        except LabError as e:
            kernels["uml"], uml_note = None, str(e)
    else:
        kernels["uml"], uml_note = None, "no UML guest: install Debian's user-mode-linux and kmod"

    t = Table(title="proxy modes by kernel")
    t.add_column("mode")
    for k, c in kernels.items():
        t.add_column(f"{k} ({c.get('release', '?')})" if c else k)
    for mode in MODES:
        ipt = mode_spec(mode).iptables_based
        for backend in ("legacy", "nft") if ipt else ("legacy",):
            label = f"{mode} ({backend} iptables)" if ipt else mode
            cells = []
            for c in kernels.values():
                if c is None:
                    cells.append("[dim]unavailable[/]")
                    continue
                why = caps.unsupported(c, mode, backend)
                cells.append("[green]yes[/]" if not why else f"[red]no[/]: {why}")
            t.add_row(label, *cells)
    console.print(t)
    if uml_note:
        console.print(f"uml: {uml_note}")
    try:
        plan = caps.plan_kernels(MODES, "legacy", "auto")
        console.print("kernel: auto plans " + ", ".join(f"{m} on {'+'.join(k)}" for m, k in plan.items()))
    except LabError as e:
        console.print(f"[red]kernel: auto cannot plan all modes[/]: {e}")
    tv = Table(title="tools")
    tv.add_column("tool")
    tv.add_column("version")
    for tool, version in caps.tool_versions().items():
        tv.add_row(tool, version or "[red]missing[/]")
    console.print(tv)
    return 0
